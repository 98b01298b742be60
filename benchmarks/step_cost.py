"""Cost of one optimizer step: warmopt next to torch.optim, same run, same tensors.

For every *layout* (a set of parameter tensors with gradients), *optimizer* (Adam, AdamW,
RMSprop) and *mode* torch offers for it (``single`` = ``foreach=False``, ``foreach=True``,
``fused=True``; RMSprop has no fused mode), five *variants* step side by side:

* ``torch``   -- ``torch.optim.<Opt>`` with the mode flag, the baseline;
* ``warming`` -- ``warmopt.<Opt>(warmup=Measured(max_update=1e-4))``: the ops of the default
  policy (``max_update`` is a constant in the formula) with a cap far below every matrix's
  relative step at these learning rates and weights (the default's 0.02 lets most of them take
  torch's full step from the first one), so every timed step warms; the largest scale at the
  end is recorded (``scale_max``) to prove it;
* ``sampled`` -- the first default, ``Measured(max_update=None, confidence=True, drift=True,
  tol=0.01, rewarm=False)``, with ``measure_every=4``: its fresh-ratio statistics (which the
  default does not take) on each tensor on one step in four, staggered; a warm-up of ~1000
  steps at beta2 = 0.999 (~110 at RMSprop's alpha = 0.99);
* ``warmed``  -- ``warmup=Linear(2)`` stepped 4 times first, so the host knows every scale is 1
  and the step is torch's own (``fast_path`` records it);
* ``watching`` -- the default policy at ``lr = 1e-5`` (every full step far below the cap, so every
  scale is 1) stepped 48 times first: it now watches, measuring one step in 16 and leaving the
  others to torch. Its rounds are consecutive steps, so its *mean* time over the 32 rounds of the
  full preset (two measured steps) over torch's mean is the cost per step of watching
  (``ratio_of_means``; the median is that of an unmeasured step).

All candidates of one (layout, optimizer) block, and an in-place ``x.add_(y)`` bandwidth probe
over as many elements, are built up front and timed in interleaved shuffled rounds
(``benchmarks.harness.run_rounds``). ``x torch`` is the median [q1-q3] over rounds of
time(warmopt) / time(torch) in the same round. ``GB/s`` is torch's minimal traffic (Adam/AdamW
28 B/param, RMSprop 20 B/param) over the median time, for every variant.

Ops and host syncs: one step (after 2 untimed steps; 4 for ``warmed``, 48 for ``watching``,
whose counted step is one it does not measure) counted by ATen op
(``warmopt._opcount.OpCounter``) at several counts of (2, 4) matrices (non-zero: tensors that
lead, as the default measures them); syncs are the ops that
copy a device value to the host. Memory: the peak allocated during a step above what was live
before it (CPU: profiler allocator events; CUDA: ``max_memory_allocated``), and the optimizer
state. Usage::

    python -m benchmarks.step_cost            # full: ~16M-param matrices, 32 timed rounds
    python -m benchmarks.step_cost --quick    # smaller, 6 rounds: about a minute on 2 cores
    python -m benchmarks.step_cost --tiny     # seconds; tests/test_step_cost_smoke.py

Writes ``benchmarks/results/step_cost.json`` and ``step_cost.md`` (``--out`` for another folder).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

import warmopt
from benchmarks import harness
from benchmarks.harness import Candidate, Layout, OpCounter

MODES: dict[str, dict[str, bool]] = {
    "single": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
VARIANTS = ("torch", "warming", "sampled", "warmed", "watching")
WARMED_PRESTEPS = 4  # Linear(2): scale 1 at step 2, known on the host at step 3
#: the default, every scale at 1: it measures steps 1, 3, 7, 15, 31 and then one in 16, so after
#: 48 steps any 16 consecutive ones hold exactly one measured step (the full preset times 32)
WATCH_PRESTEPS = 48
PROBE_BYTES = 12  # x.add_(y): read x, read y, write x


@dataclass(frozen=True)
class Algo:
    name: str
    torch_cls: type[Optimizer]
    warmopt_cls: Callable[..., Optimizer]
    modes: tuple[str, ...]
    bytes_per_param: int  # torch's minimal traffic per fp32 parameter


ALGOS = {
    "adam": Algo("adam", torch.optim.Adam, warmopt.Adam, ("single", "foreach", "fused"), 28),
    "adamw": Algo("adamw", torch.optim.AdamW, warmopt.AdamW, ("single", "foreach", "fused"), 28),
    "rmsprop": Algo("rmsprop", torch.optim.RMSprop, warmopt.RMSprop, ("single", "foreach"), 20),
}


@dataclass(frozen=True)
class Preset:
    name: str
    large: tuple[tuple[int, ...], ...]  # the few large matrices
    small: tuple[int, int]  # (pairs, side): pairs x ((side, side) matrix + (side,) bias)
    transformer: tuple[int, int, int, int, int]  # d_model, nhead, ff, layers, seq
    cnn: tuple[int, ...]  # channels of the conv blocks
    reps: int
    discard: int
    op_counts: tuple[int, ...]
    memory_layouts: tuple[str, ...] = ("large",)


PRESETS = {
    "full": Preset("full", ((2048, 2048),) * 4, (200, 100), (256, 8, 1024, 6, 32),
                   (32, 64, 128, 256), 32, 3, (10, 100, 1000), ("large", "small", "transformer")),
    "quick": Preset("quick", ((1024, 1024),) * 4, (200, 50), (256, 8, 1024, 6, 32),
                    (16, 32, 64), 6, 2, (10, 100, 1000)),
    "tiny": Preset("tiny", ((64, 64),) * 2, (5, 8), (32, 2, 64, 1, 4), (4, 8), 2, 1, (4, 16)),
}  # fmt: skip


def policies() -> dict[str, warmopt.WarmupPolicy]:
    return {
        "warming": warmopt.Measured(max_update=1e-4),
        "sampled": warmopt.Measured(
            max_update=None, confidence=True, drift=True, tol=0.01, measure_every=4, rewarm=False
        ),
        "warmed": warmopt.Linear(2),
        "watching": warmopt.Measured(),
    }


#: the watching candidate's lr: small enough that no full step reaches the cap, so every scale
#: is 1 from the first step (the cost of a step does not depend on the lr)
WATCH_LR = 1e-5


def build(algo: Algo, mode: str, variant: str, params: list[Tensor]) -> Optimizer:
    if variant == "torch":
        return algo.torch_cls(params, **MODES[mode])
    lr = {"lr": WATCH_LR} if variant == "watching" else {}
    return algo.warmopt_cls(params, warmup=policies()[variant], **MODES[mode], **lr)


def layouts(preset: Preset, device: torch.device, seed: int) -> Iterator[Layout]:
    """Built one at a time, so only one layout's tensors are alive."""
    gen = torch.Generator().manual_seed(seed)
    big = preset.large
    yield harness.random_layout("large", f"{len(big)} matrices {big[0]}", big, 3, device, gen)
    pairs, side = preset.small
    yield harness.random_layout(
        "small", f"{pairs} x ({side},{side}) + {pairs} x ({side},)",
        [(side, side), (side,)] * pairs, 3, device, gen,
    )  # fmt: skip
    torch.manual_seed(seed)
    d, heads, ff, depth, seq = preset.transformer
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
    yield harness.model_layout(
        "transformer", f"nn.TransformerEncoder: {depth} layers, d_model {d}, nhead {heads}, "
        f"ff {ff}; grads from real backward passes", model,
        lambda: torch.randn(8, seq, d), 3, device,
    )  # fmt: skip
    chans = preset.cnn
    blocks: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1)]
    for a, b in itertools.pairwise((chans[0], *chans)):
        blocks += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        blocks += [nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
    cnn = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], 10))
    yield harness.model_layout(
        "cnn", f"conv net: {len(chans)} stages of two 3x3 convs + BatchNorm, channels {chans}; "
        "grads from real backward passes", cnn, lambda: torch.randn(4, 3, 16, 16), 3, device,
    )  # fmt: skip


def candidate(algo: Algo, mode: str, variant: str, layout: Layout) -> Candidate:
    params = [nn.Parameter(t.clone()) for t in layout.templates]
    opt = build(algo, mode, variant, params)

    def set_grads(k: int) -> None:
        for p, g in zip(params, layout.grad_sets[k % len(layout.grad_sets)]):
            p.grad = g  # shared: none of these optimizers writes into .grad

    if variant in ("warmed", "watching"):
        for k in range(WARMED_PRESTEPS if variant == "warmed" else WATCH_PRESTEPS):
            set_grads(k)
            opt.step()
    info = {"optimizer": algo.name, "mode": mode, "variant": variant, "opt": opt}
    if variant == "watching":  # its warming calls so far: the timed ones are counted from here
        info["calls_before"] = opt._book.calls  # type: ignore[attr-defined]
    return Candidate(f"{algo.name}/{mode}/{variant}", opt.step, set_grads, info)


def timing_rows(layout: Layout, algo: Algo, cands: list[Candidate]) -> list[dict[str, Any]]:
    by_key = {c.key: c for c in cands}
    probe_gbps = PROBE_BYTES * layout.numel / statistics.median(by_key["probe"].times) / 1e9
    rows = []
    for c in cands:
        if c.key == "probe":
            continue
        q1, med, q3 = harness.quartiles(c.times)
        base = by_key[f"{algo.name}/{c.info['mode']}/torch"]
        p1, pmed, p3 = harness.paired_ratios(c, base)
        opt = c.info["opt"]
        warm = isinstance(opt, warmopt.WarmupOptimizer)
        gbps = algo.bytes_per_param * layout.numel / med / 1e9
        rows.append({
            "layout": layout.name, **{k: c.info[k] for k in ("optimizer", "mode", "variant")},
            "n": len(c.times), "median_ms": med * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
            "min_ms": min(c.times) * 1e3, "max_ms": max(c.times) * 1e3,
            "ratio_vs_torch": pmed, "paired_ratio_q1": p1, "paired_ratio_q3": p3,
            "ratio_of_medians": med / statistics.median(base.times),
            "ratio_of_means": statistics.fmean(c.times) / statistics.fmean(base.times),
            "gbps": gbps, "fraction_of_probe": gbps / probe_gbps,
            "scale_max": float(torch.cat(opt.warmup_scale).max()) if warm else None,
            "scale_min": float(torch.cat(opt.warmup_scale).min()) if warm else None,
            "fast_path": bool(opt._warmup_done) if warm else None,
            # watching: how many of its rounds (discarded ones included) were measured steps
            "measured_steps": opt._book.calls - c.info["calls_before"]
            if "calls_before" in c.info else None,
        })  # fmt: skip
    return rows


#: the stages of ``WarmupOptimizer.step`` (functions of ``warmopt.optimizer``), timed one by one
STAGES = ("collect", "measure", "measure_update", "advance", "apply")


def stage_rows(layout: Layout, rounds: int, device: torch.device) -> list[dict[str, Any]]:
    """Where a warming step's time goes: Adam's warming variant (fresh, so it warms throughout)
    stepped in alternation with torch's, each stage of its step timed (CPU only: on an
    accelerator a stage's wall time is its launches, not its work)."""
    if device.type != "cpu":
        return []
    import warmopt.optimizer as stages

    algo, rows = ALGOS["adam"], []
    spent: dict[str, float] = {}
    originals = {name: getattr(stages, name) for name in STAGES}

    def timed(name: str) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = originals[name](*args, **kwargs)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return out

        return run

    for mode in ("foreach", "fused"):
        base, warm = (candidate(algo, mode, v, layout) for v in ("torch", "warming"))
        per_stage: dict[str, list[float]] = {name: [] for name in STAGES}
        for name in STAGES:
            setattr(stages, name, timed(name))
        try:
            for r in range(2 + rounds):
                for c in (base, warm):
                    c.set_grads(r)
                    spent.clear()
                    start = time.perf_counter()
                    c.step()
                    if r >= 2:
                        c.times.append(time.perf_counter() - start)
                if r >= 2:
                    for name in STAGES:
                        per_stage[name].append(spent.get(name, 0.0))
        finally:
            for name, f in originals.items():
                setattr(stages, name, f)
        opt = warm.info["opt"]
        stage_ms = {name: statistics.median(v) * 1e3 for name, v in per_stage.items()}
        rows.append({
            "layout": layout.name, "optimizer": algo.name, "mode": mode, "n": rounds,
            "torch_ms": statistics.median(base.times) * 1e3,
            "warming_ms": statistics.median(warm.times) * 1e3, "stage_ms": stage_ms,
            "still_warming": float(torch.cat(opt.warmup_scale).max()) < 1,
        })  # fmt: skip
    return rows


def count_ops(algo: Algo, mode: str, variant: str, n: int, device: torch.device) -> OpCounter:
    gen = torch.Generator().manual_seed(0)
    params = [
        nn.Parameter(torch.randn(2, 4, generator=gen).mul_(0.02).to(device)) for _ in range(n)
    ]
    opt = build(algo, mode, variant, params)
    presteps = {"warmed": WARMED_PRESTEPS, "watching": WATCH_PRESTEPS}.get(variant, 2)
    for _ in range(presteps):
        for p in params:
            p.grad = torch.randn(2, 4, generator=gen).to(device)
        opt.step()
    for p in params:
        p.grad = torch.randn(2, 4, generator=gen).to(device)
    with OpCounter() as counter:
        opt.step()
    return counter


def op_rows(preset: Preset, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for algo in ALGOS.values():
        for mode, n in itertools.product(algo.modes, preset.op_counts):
            counted = {v: count_ops(algo, mode, v, n, device) for v in VARIANTS}
            base = counted["torch"]
            for v, c in counted.items():
                rows.append({
                    "optimizer": algo.name, "mode": mode, "variant": v, "tensors": n,
                    "ops": c.total, "kernels": sum(c.kernels.values()), "syncs": c.syncs,
                    "extra_ops": c.total - base.total, "extra_syncs": c.syncs - base.syncs,
                    "same_ops_as_torch": c.ops == base.ops,
                    "top_extra_ops": dict((c.ops - base.ops).most_common(6)),
                })  # fmt: skip
    return rows


def peak_bytes(step: Callable[[], Any], device: torch.device) -> int | None:
    """Peak allocated during ``step`` above what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with (
        harness.quiet_stderr(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p,
    ):
        step()
    events = p.profiler.kineto_results.experimental_event_tree() if p.profiler else []
    allocs, stack = [], list(events)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocs.append(node)
        stack.extend(node.children)
    live = peak = 0
    for node in sorted(allocs, key=lambda e: e.start_time_ns):
        live += node.extra_fields.alloc_size
        peak = max(peak, live)
    return peak


def memory_rows(layout: Layout, cands: list[Candidate], device: torch.device) -> list[dict]:
    rows = []
    for c in cands:
        if c.key == "probe":
            continue
        c.set_grads(0)
        state = c.info["opt"].state.values()
        rows.append({
            "layout": layout.name, **{k: c.info[k] for k in ("optimizer", "mode", "variant")},
            "peak_extra_bytes": peak_bytes(c.step, device),
            "state_bytes": sum(v.numel() * v.element_size() for st in state for v in st.values()
                               if isinstance(v, Tensor)),
            # the measure stage's work buffers, kept between warming steps
            "kept_bytes": layouts.kept_bytes() if (layouts := getattr(
                c.info["opt"], "_layouts", None)) is not None else 0,
        })  # fmt: skip
    return rows


#: the issue's targets: (name, layouts, optimizers, mode, variant, limit)
TARGETS = [
    ("foreach warming <= 1.10x torch foreach", ("transformer", "small"), ("adam", "adamw"),
     "foreach", "warming", 1.10),
    ("fused warming <= 1.30x torch fused", ("transformer", "small"), ("adam", "adamw"),
     "fused", "warming", 1.30),
    ("after warm-up <= 1.05x torch", None, None, None, "warmed", 1.05),
    ("watching <= 1.05x torch (mean)", None, None, None, "watching", 1.05),
]  # fmt: skip


def targets(timings: list[dict[str, Any]], ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name, lays, opts, mode, variant, limit in TARGETS:
        rows = [
            r for r in timings
            if r["variant"] == variant and (lays is None or r["layout"] in lays)
            and (opts is None or r["optimizer"] in opts) and (mode is None or r["mode"] == mode)
        ]  # fmt: skip
        key = "ratio_of_means" if variant == "watching" else "ratio_vs_torch"
        worst = max(rows, key=lambda r: r[key])
        missed = [r for r in rows if r[key] > limit]
        out.append({
            "target": name, "threshold": limit, "worst": worst[key],
            "worst_at": f"{worst['optimizer']}/{worst['mode']}/{worst['layout']}",
            "met": not missed,
            "detail": ", ".join(f"{r['optimizer']}/{r['mode']}/{r['layout']} "
                                f"{r[key]:.2f}x" for r in missed) or "all met",
        })  # fmt: skip
    added = [r for r in ops if r["variant"] != "torch" and r["extra_syncs"] > 0]
    out.append({
        "target": "0 host syncs added", "threshold": 0,
        "worst": max((r["extra_syncs"] for r in added), default=0),
        "worst_at": "; ".join(f"{r['optimizer']}/{r['mode']}/{r['variant']}@{r['tensors']}"
                              for r in added) or "-",
        "met": not added, "detail": "syncs(warmopt) - syncs(torch), every optimizer/mode/count",
    })  # fmt: skip
    return out


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# Step cost: warmopt vs torch.optim ({meta['preset']})", "",
        f"torch {meta['torch']}, Python {meta['python']}, {meta['machine']} ({meta['cpus']} CPUs), "
        f"device {meta['device']}, {meta['threads']} thread(s), commit {meta['commit']}; "
        f"{meta['reps']} timed rounds after {meta['discard']} untimed, candidates shuffled every "
        "round. Times: median [q1-q3] ms. x torch: median [q1-q3] of the per-round ratio "
        "warmopt/torch (same layout and mode, same round). GB/s: torch's minimal traffic "
        "(Adam/AdamW 28 B/param, RMSprop 20 B/param) over the median, and its share of the "
        "probe (in-place add, 12 B/element).", "", "## Layouts", "",
    ]  # fmt: skip
    lines += harness.table(
        ["layout", "tensors", "params", "description", "probe GB/s"],
        [[k, v["tensors"], f"{v['numel']:,}", v["description"], f"{v['probe_gbps']:.1f}"]
         for k, v in result["layouts"].items()],
    )  # fmt: skip
    index = {(r["layout"], r["optimizer"], r["mode"], r["variant"]): r for r in result["timings"]}

    def ratio(r: dict[str, Any]) -> str:
        return f"{r['ratio_vs_torch']:.2f} [{r['paired_ratio_q1']:.2f}-{r['paired_ratio_q3']:.2f}]"

    def ms(r: dict[str, Any]) -> str:
        return f"{r['median_ms']:.2f} [{r['q1_ms']:.2f}-{r['q3_ms']:.2f}]"

    rows = []
    for lay, algo in itertools.product(result["layouts"], ALGOS.values()):
        for mode in algo.modes:
            t, w, s, d, a = (index[(lay, algo.name, mode, v)] for v in VARIANTS)
            rows.append([lay, algo.name, mode, ms(t), ms(w), ratio(w), ratio(s), ms(d), ratio(d),
                         f"{a['ratio_of_means']:.2f}",
                         f"{t['gbps']:.1f} ({100 * t['fraction_of_probe']:.0f}%)",
                         f"{w['gbps']:.1f}"])  # fmt: skip
    lines += ["", "## Step time", "",
              "watching: the default once every scale is 1, which measures one step in 16 (the "
              "others are torch's own): its mean step time over the rounds over torch's.", "",
              *harness.table(
        ["layout", "optimizer", "mode", "torch ms", "warming ms", "warming x torch",
         "sampled/4 x torch", "warmed ms", "warmed x torch", "watching x torch (mean)",
         "GB/s torch", "GB/s warming"], rows,
    )]  # fmt: skip
    scales = [r["scale_max"] for r in result["timings"] if r["variant"] in ("warming", "sampled")]
    fast = all(r["fast_path"] for r in result["timings"] if r["variant"] == "warmed")
    watch = [r for r in result["timings"] if r["variant"] == "watching"]
    rounds = meta["reps"] + meta["discard"]
    at_one = all(r["scale_min"] == 1.0 for r in watch)
    measured = sorted({r["measured_steps"] for r in watch})
    lines += ["", f"Checks: largest scale of a warming candidate after its last timed step "
              f"{max(scales):.3f} (must be < 1); every warmed candidate on the fast path: "
              f"{'yes' if fast else 'NO'}; every watching candidate at scale 1: "
              f"{'yes' if at_one else 'NO'}, measured steps in its {rounds} rounds: "
              f"{' or '.join(map(str, measured))}.", ""]  # fmt: skip
    counts = meta["op_counts"]
    ops = {(r["optimizer"], r["mode"], r["variant"], r["tensors"]): r for r in result["ops"]}

    def series(a: str, m: str, v: str, key: str) -> str:
        return " / ".join(str(ops[(a, m, v, n)][key]) for n in counts)

    lines += [f"## ATen ops and host syncs per step (at {' / '.join(map(str, counts))} tensors)",
              "", *harness.table(
        ["optimizer", "mode", "torch ops", "warming ops", "warming kernels", "warmed ops",
         "torch syncs", "warming syncs", "warmed == torch", "watching (unmeasured) == torch"],
        [[a.name, m, series(a.name, m, "torch", "ops"), series(a.name, m, "warming", "ops"),
          series(a.name, m, "warming", "kernels"), series(a.name, m, "warmed", "ops"),
          series(a.name, m, "torch", "syncs"), series(a.name, m, "warming", "syncs"),
          *["yes" if all(ops[(a.name, m, v, n)]["same_ops_as_torch"] for n in counts)
            else "NO" for v in ("warmed", "watching")]]
         for a in ALGOS.values() for m in a.modes],
    )]  # fmt: skip

    def mb(x: int | None) -> str:
        return "n/a" if x is None else f"{x / 2**20:.1f}"

    mem = {(r["layout"], r["optimizer"], r["mode"], r["variant"]): r for r in result["memory"]}
    lines += ["", "## Peak extra memory during one step, and optimizer state (MB)", "",
              "kept while warming: the measure stage's work buffers, held between warming "
              "steps (at most a quarter of the measured tensors' elements, or 16 MiB) and "
              "dropped when the warm-up ends.", ""]  # fmt: skip
    lines += harness.table(
        ["layout", "optimizer", "mode", "torch", "warming", "warmed", "state torch",
         "state warmopt", "kept while warming"],
        [[k[0], k[1], k[2], mb(r["peak_extra_bytes"]),
          mb(mem[(*k[:3], "warming")]["peak_extra_bytes"]),
          mb(mem[(*k[:3], "warmed")]["peak_extra_bytes"]), mb(r["state_bytes"]),
          mb(mem[(*k[:3], "warming")]["state_bytes"]),
          mb(mem[(*k[:3], "warming")].get("kept_bytes"))]
         for k, r in mem.items() if k[3] == "torch"],
    )  # fmt: skip
    if result.get("stages"):
        lines += ["", "## Where a warming step's time goes (Adam, median ms)", "",
                  "A fresh warming optimizer stepped in alternation with torch's, each stage of "
                  "its step timed: *collect* (torch's `_init_group` and the warm-up state), "
                  "*measure* (the relative step on each tensor's first coordinates), *advance* "
                  "(the policy), *apply* (the update at `lr * s`); *rest* is the step's own "
                  "Python. Where *apply* matches torch, the extra is measuring.", ""]
        lines += harness.table(
            ["layout", "mode", "torch", "warming", "collect", "measure", "advance", "apply",
             "rest", "still warming"],
            [[r["layout"], r["mode"], f"{r['torch_ms']:.2f}", f"{r['warming_ms']:.2f}",
              f"{r['stage_ms']['collect']:.2f}",
              f"{r['stage_ms']['measure'] + r['stage_ms']['measure_update']:.2f}",
              f"{r['stage_ms']['advance']:.2f}", f"{r['stage_ms']['apply']:.2f}",
              f"{r['warming_ms'] - sum(r['stage_ms'].values()):.2f}",
              "yes" if r["still_warming"] else "NO"] for r in result["stages"]],
        )  # fmt: skip
    lines += ["", "## Targets", "", *harness.table(
        ["target", "worst", "at", "met", "missed"],
        [[t["target"], f"{t['worst']:.2f}x" if isinstance(t["worst"], float) else t["worst"],
          t["worst_at"], "yes" if t["met"] else "NO", t["detail"]] for t in result["targets"]],
    )]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    harness.git_commit()  # stamp the results with the code as it is when the run starts
    ap = argparse.ArgumentParser(prog="python -m benchmarks.step_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller layouts, 6 rounds")
    size.add_argument("--tiny", action="store_true", help="toy sizes for the smoke test")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=harness.RESULTS, help="folder for the results")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = ap.parse_args(argv)
    preset = PRESETS["tiny" if args.tiny else "quick" if args.quick else "full"]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    progress = harness.Progress(4 * len(ALGOS) * (preset.discard + preset.reps),
                                not args.no_progress, "step_cost")  # fmt: skip
    lays: dict[str, dict[str, Any]] = {}
    timings: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    try:
        for layout in layouts(preset, device, args.seed):
            probe_times: list[float] = []
            for algo in ALGOS.values():
                progress.describe(f"{layout.name}/{algo.name}")
                cands = [candidate(algo, m, v, layout) for m in algo.modes for v in VARIANTS]
                x = torch.randn(layout.numel, device=device)
                y = torch.randn(layout.numel, device=device)
                cands.append(Candidate("probe", lambda x=x, y=y: x.add_(y)))
                harness.run_rounds(cands, preset.reps, preset.discard, rng, device, progress)
                timings += timing_rows(layout, algo, cands)
                probe_times += cands[-1].times
                if layout.name in preset.memory_layouts:
                    memory += memory_rows(layout, cands, device)
                del cands
            stages += stage_rows(layout, preset.reps, device)
            lays[layout.name] = {
                "tensors": len(layout.templates), "numel": layout.numel,
                "description": layout.description,
                "probe_gbps": PROBE_BYTES * layout.numel / statistics.median(probe_times) / 1e9,
            }  # fmt: skip
        progress.describe("ops")
        ops = op_rows(preset, device)
    finally:
        progress.close()
    meta = harness.stamp(
        device=str(device), preset=preset.name, quick=bool(args.quick), reps=preset.reps,
        discard=preset.discard, seed=args.seed, op_counts=list(preset.op_counts),
        policies={k: repr(v) for k, v in policies().items()}, sync_ops=list(harness.SYNC_OPS),
        elapsed_s=round(time.perf_counter() - started, 1),
    )  # fmt: skip
    result = {"meta": meta, "layouts": lays, "timings": timings, "ops": ops, "memory": memory,
              "stages": stages}  # fmt: skip
    result["targets"] = targets(timings, ops)
    harness.write_results("step_cost", result, markdown(result), args.out)
    return result


if __name__ == "__main__":
    main()
