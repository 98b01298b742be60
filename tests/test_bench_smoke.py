"""Each benchmark entry point runs with tiny settings, so the scripts cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench


@pytest.mark.parametrize("task", ["mse", "ce"])
def test_demo_runs_tiny(tmp_path: Path, task: str) -> None:
    pytest.importorskip("sklearn", reason="the demo needs scikit-learn (pip install -e '.[bench]')")
    pytest.importorskip("pytorch_warmup", reason="the demo needs pytorch-warmup ('.[bench]')")
    from benchmarks import demo

    result = demo.main(["--tiny", "--task", task, "--out", str(tmp_path)])
    stem = "demo_tiny" if task == "mse" else f"demo_{task}_tiny"
    saved = json.loads((tmp_path / f"{stem}.json").read_text())
    assert saved["meta"]["tiny"] is True and saved["meta"]["task"] == task
    assert (tmp_path / f"{stem}_lr.png").exists()
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"adam", "warmopt", "radam", "untuned_linear", "linear_oracle"}
    assert all(r["final_loss"] > 0 for r in result["rows"])


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
