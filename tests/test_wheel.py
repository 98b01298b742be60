"""`python -m build` makes a wheel whose installed package passes tests, away from the sources.

The wheel is built from a copy of the project files (a stale ``build/`` in the work tree cannot
leak into it), installed with ``pip install --no-deps --no-index`` into a fresh venv, and
exercised from a temporary directory, so the repository root is not on ``sys.path`` to shadow it.
The venv sees the packages of the interpreter running this test (torch, pytest) through a
``.pth`` file listing that interpreter's site-packages directories: they come after the venv's
own site-packages on ``sys.path``. That works whether this interpreter is itself a virtualenv
(whose packages ``--system-site-packages`` would not show: it exposes the *base* interpreter's)
or a system-wide install. The editable install of the work tree is visible in that venv too,
hence ``--ignore-installed``; every check asserts that ``warmopt`` really is the venv's copy.
"""

from __future__ import annotations

import ast
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

INSTALLED_CHECK = """
import importlib.metadata, pathlib, sys, sysconfig
import torch
import warmopt
site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
here = pathlib.Path(warmopt.__file__).resolve()
assert here.is_relative_to(site), (here, site)
assert (here.parent / "py.typed").is_file()
assert warmopt.__version__ == importlib.metadata.version("warmopt") == sys.argv[1]
# a twin check against torch: warmup=None is torch.optim.Adam exactly
torch.manual_seed(0)
a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
b = [torch.nn.Parameter(p.detach().clone()) for p in a]
ours, ref = warmopt.Adam(a, lr=1e-2, warmup=None), torch.optim.Adam(b, lr=1e-2)
for _ in range(5):
    for p, q in zip(a, b):
        p.grad = torch.randn(p.shape); q.grad = p.grad.clone()
    ours.step(); ref.step()
assert all(torch.equal(p, q) for p, q in zip(a, b))
print("ok", here)
"""

# runs inside the copied test package: the tests import warmopt from the venv, not the tree
INSTALLED_TEST = """
import pathlib, sysconfig
import warmopt

def test_warmopt_is_the_installed_wheel():
    site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
    assert pathlib.Path(warmopt.__file__).resolve().is_relative_to(site)
"""


def _source_version() -> str:
    """``__version__`` of the work tree, where pyproject says the version lives."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomli on 3.10")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["dynamic"] == ["version"]
    attr = meta["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, name = attr.rsplit(".", 1)
    source = (ROOT / module.replace(".", "/") / "__init__.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            name
        ]:
            return str(ast.literal_eval(node.value))
    raise AssertionError(f"{attr} not found")


def _site_dirs() -> list[str]:
    """Where the running interpreter finds its installed packages: its site-packages (a venv's,
    or the system's), the user site if enabled, in ``sys.path`` order, existing ones only."""
    paths = sysconfig.get_paths()
    dirs = [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    seen: list[str] = []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.append(d)
    return seen


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_installs_and_passes_tests(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="needs the 'build' package (pip install -e '.[test]')")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    version = _source_version()

    # 1. build from a clean copy of what the wheel is made of
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "warmopt", src / "warmopt", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist)], src, env)
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"warmopt-{version}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "warmopt/py.typed" in names
    assert "warmopt/monitor.py" in names
    assert {n.split("/")[0] for n in names} == {"warmopt", f"warmopt-{version}.dist-info"}
    assert f"warmopt-{version}.dist-info/licenses/LICENSE" in names

    # 2. a fresh venv that sees this interpreter's packages after its own; pip from this one
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = str(venv / "bin" / "python")
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   tmp_path, env).strip()  # fmt: skip
    (Path(purelib) / "outer_site_packages.pth").write_text("\n".join(_site_dirs()) + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--ignore-installed", "--quiet", str(wheel)],
        tmp_path, env,
    )  # fmt: skip

    # 3. from a directory outside the repository
    work = tmp_path / "work"
    work.mkdir()
    out = _run([python, "-c", INSTALLED_CHECK, version], work, env)
    assert out.startswith("ok ") and str(venv) in out

    # 4. a subset of the suite (parity with torch) and the docstring examples, on the installed
    # package: the tests are copied next to a test of where warmopt comes from, and pytest gets
    # its own empty config, so neither the repository root nor its pyproject is used.
    suite = work / "wheeltests"
    suite.mkdir()
    for name in ("__init__.py", "cases.py", "test_parity.py"):
        shutil.copy2(ROOT / "tests" / name, suite / name)
    (suite / "test_installed.py").write_text(INSTALLED_TEST)
    (work / "pytest.ini").write_text("[pytest]\n")
    common = ["-q", "-p", "no:cacheprovider", "-c", str(work / "pytest.ini")]
    out = _run([python, "-m", "pytest", *common, "wheeltests"], work, env)
    assert " passed" in out and "failed" not in out
    out = _run(
        [python, "-m", "pytest", *common, "--doctest-modules", "--pyargs", "warmopt"], work, env
    )
    assert " passed" in out and "failed" not in out
