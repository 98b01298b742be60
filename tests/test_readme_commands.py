"""The README's test command prints pytest's counts line, also with an extra ``-q``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extra", [[], ["-q"]], ids=["python -m pytest", "python -m pytest -q"])
def test_pytest_with_the_project_config_prints_the_counts(tmp_path: Path, extra: list[str]) -> None:
    """The project's pytest options (pyproject.toml) leave the summary line on: with ``-q`` in
    ``addopts`` a user's own ``-q`` made it ``-qq``, which prints no counts."""
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert True\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH")}
    cmd = [
        sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
        "--rootdir", str(tmp_path), "-p", "no:cacheprovider", *extra, str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^=* ?1 passed in [\d.]+s", proc.stdout, re.M), proc.stdout
