"""Smoke test of ``benchmarks/step_cost.py``: the ``--tiny`` preset runs end to end in seconds and
writes the JSON and markdown the full benchmark writes, with every section filled in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import step_cost

pytestmark = pytest.mark.bench

META_KEYS = {
    "torch", "python", "machine", "platform", "commit", "threads", "device", "quick", "preset",
    "reps", "discard", "op_counts", "policies", "sync_ops", "elapsed_s",
}  # fmt: skip
TIMING_KEYS = {
    "layout", "optimizer", "mode", "variant", "n", "median_ms", "q1_ms", "q3_ms", "min_ms",
    "max_ms", "ratio_vs_torch", "ratio_of_medians", "paired_ratio_q1", "paired_ratio_q3", "gbps",
    "fraction_of_probe", "scale_max", "fast_path",
}  # fmt: skip
OPS_KEYS = {
    "optimizer", "mode", "variant", "tensors", "ops", "kernels", "syncs", "extra_ops",
    "extra_syncs", "same_ops_as_torch",
}  # fmt: skip
MEMORY_KEYS = {"layout", "optimizer", "mode", "variant", "peak_extra_bytes", "state_bytes"}


def test_tiny_run_writes_complete_results(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng():
            result = step_cost.main(["--tiny", "--no-progress", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)

    written = json.loads((tmp_path / "step_cost.json").read_text())
    assert written["meta"]["commit"] == result["meta"]["commit"]
    assert {"meta", "layouts", "timings", "ops", "memory", "targets"} <= set(written)
    meta = written["meta"]
    assert META_KEYS <= set(meta)
    assert meta["preset"] == "tiny" and meta["quick"] is False and meta["threads"] == 1
    assert set(written["layouts"]) == {"large", "small", "transformer", "cnn"}
    assert all(v["probe_gbps"] > 0 for v in written["layouts"].values())

    timings = written["timings"]
    for row in timings:
        assert TIMING_KEYS <= set(row)
        assert row["median_ms"] > 0 and row["n"] == meta["reps"]
    # every layout x optimizer x mode x variant once: Adam/AdamW 3 modes, RMSprop 2
    assert len(timings) == 4 * (3 + 3 + 2) * 5  # layouts x (optimizer, mode) x variants
    torch_rows = [r for r in timings if r["variant"] == "torch"]
    assert all(r["ratio_vs_torch"] == 1.0 for r in torch_rows)
    assert all(r["scale_max"] < 1 for r in timings if r["variant"] in ("warming", "sampled"))
    assert all(r["fast_path"] for r in timings if r["variant"] == "warmed")
    rounds = meta["reps"] + meta["discard"]
    for r in (r for r in timings if r["variant"] == "watching"):
        # at scale 1 and watching: at most one of any 16 consecutive rounds was a measured step
        assert r["scale_min"] == 1.0 and r["fast_path"], r
        assert 0 <= r["measured_steps"] <= 1 + rounds // 16, r

    ops = written["ops"]
    assert len(ops) == (3 + 3 + 2) * 5 * len(meta["op_counts"])
    for row in ops:
        assert OPS_KEYS <= set(row)
        if row["variant"] in ("warmed", "watching"):  # watching: a step it does not measure
            assert row["same_ops_as_torch"]
        elif row["variant"] in ("warming", "sampled"):  # counted while warming: ops of its own
            assert not row["same_ops_as_torch"] and row["extra_ops"] > 0

    assert written["memory"] and all(MEMORY_KEYS <= set(r) for r in written["memory"])
    # the measure stage keeps its buffers while warming (tiny layouts: under 16 MiB), and only then
    for r in written["memory"]:
        if r["variant"] != "watching":  # keeps them only after a measured step
            assert (r["kept_bytes"] > 0) == (r["variant"] in ("warming", "sampled")), r
    stages = written["stages"]  # Adam foreach and fused on every layout, warming throughout
    assert {(r["layout"], r["mode"]) for r in stages} == {
        (lay, m) for lay in written["layouts"] for m in ("foreach", "fused")
    }
    for r in stages:
        assert r["still_warming"] and r["n"] == meta["reps"]
        assert set(r["stage_ms"]) == set(step_cost.STAGES)
        assert 0 < r["stage_ms"]["apply"] and sum(r["stage_ms"].values()) <= r["warming_ms"] * 2
    assert {t["target"] for t in written["targets"]} >= {
        "fused warming <= 1.30x torch fused",
        "foreach warming <= 1.10x torch foreach",
        "after warm-up <= 1.05x torch",
        "watching <= 1.05x torch (mean)",
        "0 host syncs added",
    }
    md = (tmp_path / "step_cost.md").read_text()
    assert "## Step time" in md and "## Targets" in md and "time goes" in md
