"""Smoke test of ``benchmarks/fusion_probe.py``: the ``--tiny`` preset runs end to end and writes
the JSON and markdown the full probe writes, with every section filled in and the checks passing.

Marked ``slow``: the probe compiles five functions with inductor (C++ on the CPU) plus three tiny
ones for the float-``lr`` check. On a 2-core machine the first ``torch.compile`` call takes ~6 s
with warm inductor caches and ~18 s with cold ones, and the whole test ~25 s warm / ~45 s cold.
Deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import fusion_probe

CANDIDATES = {
    "torch_fused", "torch_foreach", "warmopt_fused", "warmopt_foreach", "cstats+fused+lerp",
    "cstats+fused", "cadam", "cstats+cadam", "cwarm", "read_probe", "policy_eager",
}  # fmt: skip
COMPONENTS = {"read_probe", "policy_eager"}  # not steps
COMPILED = {"stats_fn", "update_fn", "stats_update_fn", "warming_step_fn", "read_probe_fn"}
META_KEYS = {
    "torch", "python", "machine", "platform", "commit", "threads", "preset", "reps",
    "warmup_iters", "command", "inductor_cache", "policy", "elapsed_s",
}  # fmt: skip
TIMING_KEYS = {
    "layout", "candidate", "n", "median_ms", "q1_ms", "q3_ms", "x_fused", "x_fused_q1",
    "x_fused_q3", "x_foreach", "x_foreach_q1", "x_foreach_q3", "scale_max", "gbps",
}  # fmt: skip


@pytest.fixture
def fresh_dynamo():  # type: ignore[no-untyped-def]
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_tiny_run_writes_complete_results(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        result = fusion_probe.main(["--tiny", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # restored

    written = json.loads((tmp_path / "fusion_probe_tiny.json").read_text())
    assert written["meta"]["commit"] == result["meta"]["commit"]
    assert {"meta", "layouts", "timings", "compile", "checks", "float_lr", "memory"} <= set(written)
    meta = written["meta"]
    assert META_KEYS <= set(meta)
    assert meta["preset"] == "tiny" and meta["threads"] == 1
    assert meta["command"] == "python -m benchmarks.fusion_probe --tiny"
    layouts = set(written["layouts"])
    assert layouts

    timings = written["timings"]
    assert {(r["layout"], r["candidate"]) for r in timings} == {
        (lay, c) for lay in layouts for c in CANDIDATES
    }
    for row in timings:
        assert TIMING_KEYS <= set(row)
        assert row["median_ms"] > 0 and row["n"] == meta["reps"]
    for row in timings:
        if row["candidate"] == "torch_fused":
            assert row["x_fused"] == 1.0
        if row["candidate"] in ("warmopt_fused", "warmopt_foreach", "cwarm"):
            assert 0 < row["scale_max"] < 1  # still warming

    compiled = written["compile"]
    assert {(c["layout"], c["function"]) for c in compiled} == {
        (lay, f) for lay in layouts for f in COMPILED
    }
    for c in compiled:
        assert c["first_call_s"] > 0
        assert c["counts"]["unique_graphs"] == 1 and c["counts"]["graph_breaks"] == 0

    for name, check in written["checks"].items():
        stats = check["stats"]
        assert stats["compiled_vs_warmopt_sum_r"] < 1e-3
        assert stats["compiled_vs_warmopt_sum_r2"] < 1e-3
        assert stats["compiled_vs_f64_sum_r"] < 1e-5
        for update in check["updates"]:
            assert update["graphs_built_after_first_call"] == 0, (name, update)  # lr changed
            assert update["param_max_elementwise_rel_err"] < 1e-5
            assert update["displacement_rel_err"] < 1e-5
        warming = check["warming"]
        assert warming["scale_max_rel_err"] < 1e-5
        assert warming["compiled_vs_exact"]["displacement_rel_err"] < 1e-4
        assert warming["compiled_vs_warmopt"]["param_rel_err"] < 1e-5
        assert max(warming["policy_state_rel_err"].values()) < 1e-5
        assert check["graphs_built_during_timing"] == 0
    assert written["float_lr"]["graphs_built"] == len(written["float_lr"]["lr_values"])

    memory = written["memory"]
    assert {(m["layout"], m["candidate"]) for m in memory} == {
        (lay, c) for lay in layouts for c in CANDIDATES - COMPONENTS
    }
    for m in memory:
        if m["candidate"] in ("cadam", "cstats+cadam", "cwarm"):
            assert m["copy_calls"] == 0  # inductor wrote into the inputs in place

    md = (tmp_path / "fusion_probe_tiny.md").read_text()
    for section in ("## Step time", "## Compile time", "## Numerical agreement", "## Memory"):
        assert section in md
