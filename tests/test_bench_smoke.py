"""Each benchmark entry point runs with tiny settings, so the scripts cannot rot."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench


def _git_status(root: Path) -> str | None:
    """``git status --porcelain`` of the checkout (untracked files too), or None outside git."""
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=root, capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return proc.stdout


@pytest.mark.parametrize("task", ["mse", "ce"])
def test_demo_runs_tiny_into_its_folder_with_a_verdict(
    tmp_path: Path, task: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn", reason="the demo needs scikit-learn (pip install -e '.[bench]')")
    pytest.importorskip("pytorch_warmup", reason="the demo needs pytorch-warmup ('.[bench]')")
    from benchmarks import demo

    root = Path(demo.__file__).resolve().parents[1]
    before = _git_status(root)
    monkeypatch.chdir(tmp_path)  # the default output folder is relative to the working directory
    result = demo.main(["--tiny", "--task", task, "--workers", "2"])
    out = tmp_path / "warmopt-results"
    stem = "demo_tiny" if task == "mse" else f"demo_{task}_tiny"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{end}" for end in (".json", ".md", "_lr.png", "_curves.png")
    )
    saved = json.loads((out / f"{stem}.json").read_text())
    assert saved["meta"]["tiny"] is True and saved["meta"]["task"] == task
    assert saved["meta"]["workers"] == 2 and len(saved["meta"]["seeds"]) == 2
    summary = result["summary"]
    assert set(summary["methods"]) == set(demo.METHODS)
    assert demo.METHODS == ["adam", "warmopt", "radam", "untuned_linear", "linear_oracle"]
    for m in summary["methods"].values():
        lo, hi = m["S_interval"]
        assert lo <= m["S"] <= hi or math.isclose(lo, hi)
        assert all(x > 0 for x in m["loss_mean"])
    # the verdict ends the printed report and the markdown, and names the most robust method
    printed = capsys.readouterr().out
    text = (out / f"{stem}.md").read_text()
    for where in (printed, text):
        assert "## Verdict" in where and summary["best"] in where.split("## Verdict")[1]
        assert "LR sensitivity S" in where and "`†k`" in where and "`*k`" in where
    assert text.rstrip().endswith(summary["verdict"][-1])
    # warmopt's warm-up per lr: its first scale, and where the median scale reached 1
    warm = summary["warmopt_warmup"]
    assert [w["lr"] for w in warm] == saved["meta"]["lrs"]
    assert all(0 < w["scale_first"] <= 1 and w["seeds"] == 2 for w in warm)
    assert "warmopt's warm-up at each lr" in text
    assert all(text.count(h) == 1 for h in ("## How to read this", "## Verdict"))
    assert _git_status(root) == before  # nothing written into the checkout


def test_demo_results_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the demo needs scikit-learn (pip install -e '.[bench]')")
    pytest.importorskip("pytorch_warmup", reason="the demo needs pytorch-warmup ('.[bench]')")
    from benchmarks import demo

    one = demo.main(["--tiny", "--workers", "1", "--out", str(tmp_path / "one")])
    two = demo.main(["--tiny", "--workers", "2", "--out", str(tmp_path / "two")])
    strip = [{k: v for k, v in r.items() if k != "cpu_seconds"} for r in one["runs"]]
    assert strip == [{k: v for k, v in r.items() if k != "cpu_seconds"} for r in two["runs"]]
    assert one["summary"]["verdict"] == two["summary"]["verdict"]


def test_demo_jitter_run_compares_itself_with_the_plain_run(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the demo needs scikit-learn (pip install -e '.[bench]')")
    pytest.importorskip("pytorch_warmup", reason="the demo needs pytorch-warmup ('.[bench]')")
    from benchmarks import demo

    plain = demo.main(["--tiny", "--workers", "1", "--out", str(tmp_path)])
    jittered = demo.main(["--tiny", "--workers", "1", "--jitter", "--out", str(tmp_path)])
    assert (tmp_path / "demo_jitter_tiny.json").exists() and (tmp_path / "demo_tiny.md").exists()
    assert jittered["meta"]["jitter"] and not plain["meta"]["jitter"]
    moved = [a["final_loss"] != b["final_loss"] for a, b in zip(plain["runs"], jittered["runs"])]
    assert any(moved)  # the initial weights did change
    text = (tmp_path / "demo_jitter_tiny.md").read_text()
    assert "## Against the same run without --jitter" in text
    assert f"of {len(plain['runs'])} runs changed" in text


@pytest.mark.parametrize(
    "curve,expected",
    [
        ([1.0, 0.5, 0.2, 0.1], None),  # never below a tenth of the constant loss (1.0)
        ([1.0, 0.05, 0.02, 0.01], None),  # trained, stayed down
        ([1.0, 0.05, 0.4, 0.3], None),  # rose, but not back above half of it
        ([1.0, 0.09, 0.02, 0.6, 0.9], 4),  # thrown back: step 4's loss (before its update)
        ([1.0, 0.05, math.nan], 3),  # a NaN loss counts
        ([0.6, 0.7, 0.8], None),  # never learned: a stall, not a blow-up
    ],
)
def test_demo_blowup_is_a_return_to_the_constant_predictors_loss(
    curve: list[float], expected: int | None
) -> None:
    from benchmarks import demo

    assert demo._blowup(curve, constant=1.0) == expected


def test_demo_ramp_policy_run_is_labelled_and_filed_apart(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the demo needs scikit-learn (pip install -e '.[bench]')")
    pytest.importorskip("pytorch_warmup", reason="the demo needs pytorch-warmup ('.[bench]')")
    from benchmarks import demo

    got = demo.main(["--tiny", "--workers", "1", "--warmopt-policy", "ramp", "--out",
                     str(tmp_path)])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"demo_ramp_tiny{end}" for end in (".json", ".md", "_lr.png", "_curves.png")
    )
    assert got["meta"]["warmopt_policy"] == "ramp"
    assert "rewarm=False" in got["meta"]["warmopt_policy_repr"]
    text = (tmp_path / "demo_ramp_tiny.md").read_text()
    assert "--warmopt-policy ramp" in text and "not the default" in text
    assert all("blowup_step" in r for r in got["runs"])


def test_demo_default_folder_is_ignored_by_git() -> None:
    """Run from the repository root, the demo's default folder is in .gitignore."""
    from benchmarks import demo

    root = Path(demo.__file__).resolve().parents[1]
    try:
        proc = subprocess.run(
            ["git", "check-ignore", "-q", str(demo.DEFAULT_OUT / "demo.json")], cwd=root
        )
    except OSError:
        pytest.skip("no git")
    if proc.returncode == 128:
        pytest.skip("not a git checkout")
    assert proc.returncode == 0, f"{demo.DEFAULT_OUT}/ is not in .gitignore"


def test_demo_reference_flag_targets_the_committed_results() -> None:
    from benchmarks import demo

    with pytest.raises(SystemExit):
        demo.main(["--reference", "--tiny"])  # the reference results are never tiny
    assert demo.RESULTS == Path(demo.__file__).resolve().parent / "results"
    assert not demo.DEFAULT_OUT.is_absolute()


def test_warmup_curves_runs_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import warmup_curves

    monkeypatch.setattr(sys, "argv", ["warmup_curves", "--quick", "--out", str(tmp_path)])
    warmup_curves.main()
    rows = json.loads((tmp_path / "warmup_curves_quick.json").read_text())["rows"]
    gauss = next(r for r in rows if r["policy"] == "measured" and r["gradients"] == "gaussian")
    assert gauss["steps_to_1.0"] is not None


def test_kurtosis_growth_runs_tiny(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the digits tasks need scikit-learn ('.[bench]')")
    from benchmarks import kurtosis_growth

    result = kurtosis_growth.main(["--tiny", "--out", str(tmp_path)])
    assert [r["step"] for r in result["rows"]] == [2, 4, 8]
    assert all(r["tensors"] > 0 and r["median"] >= 0 for r in result["rows"])
    assert (tmp_path / "kurtosis_growth_tiny.md").exists()
