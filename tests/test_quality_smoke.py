"""The LR-robustness benchmark (benchmarks/quality.py) runs end to end in its tiny mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench


def test_quality_runs_tiny(tmp_path: Path) -> None:
    pytest.importorskip(
        "sklearn", reason="the benchmark needs scikit-learn (pip install -e '.[bench]')"
    )
    pytest.importorskip("pytorch_warmup", reason="the benchmark needs pytorch-warmup ('.[bench]')")
    pytest.importorskip("schedulefree", reason="the benchmark needs schedulefree ('.[bench]')")
    from benchmarks import quality

    quality.main(["--tiny", "--out", str(tmp_path), "--workers", "1"])
    saved = json.loads((tmp_path / "quality_tiny.json").read_text())
    meta = saved["meta"]
    assert meta["mode"] == "tiny"
    for key in ("torch", "machine", "commit", "seconds", "started"):
        assert meta[key] not in (None, "")
    from benchmarks.quality_tasks import task_specs

    specs = {s.name: s for s in task_specs("tiny")}
    tuning = {"digits_ce", "digits_mse", "lm_post_ln", "lm_pre_ln", "gru_rmsprop"}
    assert {n for n, s in specs.items() if s.split == "tuning"} == tuning
    assert set(saved["tasks"]) == set(specs)  # the tuning tasks and the held-out ones
    for name, task in saved["tasks"].items():
        methods = set(task["summary"])
        expected = {
            "none",
            "linear_oracle",
            "untuned_linear",
            "untuned_exponential",
            "warmopt",
            "warmopt_ramp",
            "warmopt_v1",
            "warmopt_conf",
            "warmopt_drift",
            "warmopt_cap01",
            "warmopt_cap03",
            "warmopt_own1d",
            "warmopt_group",
            "warmopt_rewarm",
        }
        if specs[name].optimizer == "rmsprop":
            assert methods == expected | {"gi_rmsprop"}
        else:
            assert methods == expected | {"radam", "gi_adam", "schedulefree"}
        lrs = task["spec"]["lrs"]
        for m, s in task["summary"].items():
            assert 0 <= s["failures"] <= s["stalls"] <= s["runs"] == len(lrs), (name, m)
            assert s["sensitivity"] is None or s["sensitivity"] >= 0.0, (name, m)
        assert all(len(task["grid"][m]) == len(lrs) for m in methods)
    for split in ("tuning", "heldout", "fresh"):
        targets = saved["targets"][split]
        names = {n for n, s in specs.items() if s.split == split}
        assert set(targets["tasks"]) == names
        assert targets["S_10pct_below_best_anchor"] in (True, False)
        assert all(x["best_anchor"] in quality.UNTUNED_ANCHORS for x in targets["tasks"].values())
    # Every run was recorded, the oracle's candidates included, and losses are numbers or null.
    runs = saved["runs"]
    assert {r["method"] for r in runs} >= {"linear_2", "linear_4", "gi_adam", "schedulefree"}
    assert all(
        r["loss0"] > 0 and (r["final_loss"] is None or math.isfinite(r["final_loss"])) for r in runs
    )
    assert "KeyError" in saved["notes"][0]
    text = (tmp_path / "quality_tiny.md").read_text()
    assert "## lm_post_ln" in text and "| warmopt |" in text
    for png in saved["plots"]:
        assert (tmp_path / png).stat().st_size > 0


def test_quality_methods_rejects_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import quality

    with pytest.raises(SystemExit) as exc:  # argparse's error, before any run
        quality.main(["--tiny", "--methods", "warmopt", "no_such_method"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--methods" in err and "'no_such_method'" in err and "warmopt_cap01" in err


def test_quality_runs_tiny_subset(tmp_path: Path) -> None:
    pytest.importorskip(
        "sklearn", reason="the benchmark needs scikit-learn (pip install -e '.[bench]')"
    )
    from benchmarks import quality

    quality.main(["--tiny", "--methods", "warmopt", "--out", str(tmp_path), "--workers", "1"])
    saved = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert saved["meta"]["methods"] == ["warmopt"]
    assert {r["method"] for r in saved["runs"]} == {"warmopt"}
    for task in saved["tasks"].values():
        assert set(task["summary"]) == {"warmopt"}
        assert task["summary"]["warmopt"]["val_vs_oracle"] is None
    # no anchors ran: n/a, no crash
    assert saved["targets"] == {"tuning": {}, "heldout": {}, "fresh": {}}
    text = (tmp_path / "quality_tiny.md").read_text()
    assert "| warmopt |" in text and "Targets: n/a" in text

    # --merge: a second run of another method reports both; its own pairs replace the file's
    first = tmp_path / "first.json"
    (tmp_path / "quality_tiny.json").rename(first)
    quality.main(["--tiny", "--tasks", "digits_ce", "--methods", "none", "warmopt", "--merge",
                  str(first), "--out", str(tmp_path), "--workers", "1"])  # fmt: skip
    both = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert set(both["tasks"]) == set(saved["tasks"])
    assert set(both["tasks"]["digits_ce"]["summary"]) == {"none", "warmopt"}
    assert set(both["tasks"]["lm_post_ln"]["summary"]) == {"warmopt"}
    redone = [r for r in both["runs"] if r["task"] == "digits_ce" and r["method"] == "warmopt"]
    assert len(redone) == len(task_lrs := both["tasks"]["digits_ce"]["spec"]["lrs"])
    assert both["meta"]["runs"] == 2 * len(task_lrs)  # the runs made now
    assert both["meta"]["merged"][0]["runs"] == len(saved["runs"]) - len(task_lrs)
    assert "Merged: " in (tmp_path / "quality_tiny.md").read_text()
    with pytest.raises(SystemExit):  # a results file of another mode is refused
        quality.main(["--quick", "--tasks", "digits_ce", "--methods", "none", "--merge",
                      str(first), "--out", str(tmp_path)])  # fmt: skip

    # an ablation alone (drawn in no plot) merged in: the tables get it, the curves plot of
    # the earlier run stays as it was
    curves = (tmp_path / "quality_curves_tiny.png").read_bytes()
    quality.main(["--tiny", "--tasks", "digits_ce", "--methods", "warmopt_rewarm", "--merge",
                  str(tmp_path / "quality_tiny.json"), "--out", str(tmp_path), "--workers", "1"])
    merged = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert set(merged["tasks"]["digits_ce"]["summary"]) == {"none", "warmopt", "warmopt_rewarm"}
    assert (tmp_path / "quality_curves_tiny.png").read_bytes() == curves
    # a plotted method on one task that is not the first (whose panel has no curves now): the
    # run finishes and the curves plot of the run that drew every task stays as it was
    quality.main(["--tiny", "--tasks", "gru_rmsprop", "--methods", "warmopt", "--merge",
                  str(tmp_path / "quality_tiny.json"), "--out", str(tmp_path), "--workers", "1"])
    merged = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert merged["meta"]["runs"] == len(merged["tasks"]["gru_rmsprop"]["spec"]["lrs"])
    assert (tmp_path / "quality_curves_tiny.png").read_bytes() == curves


def test_gi_adam_initialises_second_moment_from_first_gradient() -> None:
    import torch

    from benchmarks.quality import build_runner
    from benchmarks.quality_tasks import task_specs

    spec = next(s for s in task_specs("tiny") if s.name == "digits_ce")
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    runner = build_runner("gi_adam", spec, [w], lr=0.1)
    w.grad = torch.tensor([0.5, -4.0])
    runner.step()
    state = runner.opt.state[w]
    # v_1 = beta2 g0^2 + (1 - beta2) g0^2 = g0^2, and Adam's bias correction is kept: the first
    # step is lr * g0 / sqrt(g0^2 / (1 - beta2)) = lr * sqrt(1 - beta2) * sign(g0).
    torch.testing.assert_close(state["exp_avg_sq"], torch.tensor([0.25, 16.0]))
    expected = torch.tensor([1.0, -2.0]) - 0.1 * (1 - spec.beta2) ** 0.5 * torch.tensor([1.0, -1.0])
    torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-6)


def test_each_text_task_reads_its_own_corpus() -> None:
    """The held-out Transformers share one standard-library corpus, the fresh one has its own,
    the LSTM a third: each problem's characters are exactly those of its corpus."""
    pytest.importorskip("sklearn")
    from benchmarks.quality_tasks import get_problem, load_code, load_fresh_code, task_specs

    specs = {s.name: s for s in task_specs("tiny")}
    held, lstm = load_code()
    corpus = {"code_tf_b95": held, "code_tf_b999": held, "code_tf_const": load_fresh_code(),
              "code_lstm_rmsprop": lstm}  # fmt: skip
    for name, text in corpus.items():
        prob = get_problem(specs[name])
        assert prob.chars == sorted(set(text)), name  # type: ignore[attr-defined]
        assert len(prob.train_data) + len(prob.val_data) == len(text), name  # type: ignore[attr-defined]
    assert load_fresh_code() not in (held, lstm)
