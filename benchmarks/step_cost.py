"""Cost of one optimizer step: warmopt next to torch.optim, same run, same tensors.

What is measured
================

For every *layout* (a set of parameter tensors with gradients), every *optimizer* (Adam, AdamW,
RMSprop) and every *mode* torch offers for it (``single`` = ``foreach=False``, ``foreach=True``,
``fused=True``; RMSprop has no fused mode), three *variants* step side by side:

* ``torch``   -- ``torch.optim.<Opt>`` with the mode flag, the baseline.
* ``warming`` -- ``warmopt.<Opt>`` while its scale is still below 1. The policy is
  ``warmopt.Measured(tol=0.01)``: the same ops as the default ``"measured"`` policy (``tol`` is
  only a constant in the formula), but its warm-up lasts ~1000 steps at beta2 = 0.999 and ~110 at
  RMSprop's alpha = 0.99, so every timed step is a warming step. The largest scale seen at the end
  is recorded (``scale_max``) to prove it.
* ``sampled`` -- as ``warming`` with ``Measured(tol=0.01, measure_every=4)``: each tensor's
  statistics run on one step in four, staggered across tensors, so every step measures about a
  quarter of them. The table reports the paired median ratio as for ``warming``; the JSON also
  holds the ratio of *mean* step times (``ratio_of_means``), which would differ if the steps
  alternated between two costs.
* ``warmed``  -- ``warmopt.<Opt>(warmup=warmopt.Linear(2))`` stepped 4 times before timing, so
  the host already knows every scale is 1 and the step is torch's own (``fast_path`` records it).

Timing method
-------------
All candidates of one (layout, optimizer) block -- every mode and variant, plus a bandwidth probe
-- are built up front with their own parameter copies and state (the gradient tensors are shared:
none of these optimizers writes into ``.grad`` with the default hyperparameters). Then, for
``warmup_iters + reps`` rounds, the candidates run one step each in a freshly shuffled order
(``random.Random(seed)``), each step timed alone with ``time.perf_counter`` (with a device
synchronize around it on CUDA); the first ``warmup_iters`` rounds are discarded. The garbage
collector is disabled during the rounds. Gradients cycle through ``grad_sets`` pre-computed sets so
the warming statistics see fresh data. ``torch.set_num_threads`` is fixed for the whole run
(``--threads``, default 1) and stored in the output.

Reading the step-time table
---------------------------
* ``ms`` columns: median step time, with the interquartile range ``[q1-q3]`` in brackets.
* ``x torch``: the median, over rounds, of time(warmopt) / time(torch) for the same layout and
  mode in the same round, with its IQR in brackets. Pairing within a round cancels slow drifts of
  the machine's load (it is shared); ``ratio_of_medians`` in the JSON is the unpaired ratio.
* ``GB/s``: ``bytes_per_param * numel / median`` with torch's *minimal* traffic model for every
  variant (Adam/AdamW: read p, g, m, v + write p, m, v = 28 B/param in fp32; RMSprop: read p, g, v
  + write p, v = 20 B/param). The warm-up's extra traffic is counted as cost, not as useful bytes.
  ``% probe`` compares with an in-place ``x.add_(y)`` over as many elements as the layout has
  parameters (12 B/element), timed inside the same interleaved rounds.

Ops and host syncs
------------------
One step (after 2 untimed steps; 4 for ``warmed``) runs under a ``TorchDispatchMode`` that counts
every ATen op dispatched (the idea of ``tests/opcount.py``), at 10, 100 and 1000 parameter tensors
of 8 elements.
Host syncs are the ops that copy a device value to the host: ``aten._local_scalar_dense``,
``aten.item``, ``aten.is_nonzero``, ``aten.equal``. On the CPU torch's single/foreach Adam reads
each ``step`` tensor with ``.item()`` by design; what matters is the difference to torch.

Peak extra memory
-----------------
CPU: one step under ``torch.profiler.profile(profile_memory=True)``; the allocator events (every
allocation and free of the CPU allocator, in time order) are summed and the running maximum is the
peak of memory allocated *during* the step above what was live before it (transient copies,
temporaries). CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step.
``state MB`` is the persistent optimizer state (all tensors in ``opt.state``).

Usage::

    python -m benchmarks.step_cost            # full: ~16M-param matrices, 25 timed rounds
    python -m benchmarks.step_cost --quick    # ~4M params, 6 rounds: under a minute on 2 cores
    python -m benchmarks.step_cost --tiny     # seconds; used by tests/test_step_cost_smoke.py

Writes ``benchmarks/results/step_cost.json`` and ``step_cost.md`` (``--out`` for another folder).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

import warmopt
from benchmarks._common import SYNC_OPS, OpCounter, git_commit

RESULTS = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TransformerSpec:
    d_model: int
    nhead: int
    dim_feedforward: int
    num_layers: int
    seq: int = 32
    batch: int = 8


@dataclass(frozen=True)
class Preset:
    name: str
    large: tuple[tuple[int, ...], ...]  # shapes of the few large matrices
    small_pairs: int  # layout "small": this many (side, side) matrices, each with a (side,) bias
    small_side: int
    transformer: TransformerSpec
    reps: int
    warmup_iters: int
    op_tensor_counts: tuple[int, ...]
    grad_sets: int = 3
    memory_layouts: tuple[str, ...] = ("large", "small", "transformer")


PRESETS: dict[str, Preset] = {
    "full": Preset(
        name="full",
        large=((2048, 2048),) * 4,  # 16.8M params
        small_pairs=200,
        small_side=100,  # 400 tensors, 2.02M params
        transformer=TransformerSpec(256, 8, 1024, 6),  # 72 tensors, 4.74M params
        reps=25,
        warmup_iters=3,
        op_tensor_counts=(10, 100, 1000),
    ),
    "quick": Preset(
        name="quick",
        large=((1024, 1024),) * 4,  # 4.2M params
        small_pairs=200,
        small_side=50,  # 400 tensors, 0.51M params
        transformer=TransformerSpec(256, 8, 1024, 6),
        reps=6,
        warmup_iters=2,
        op_tensor_counts=(10, 100, 1000),
        memory_layouts=("large",),
    ),
    "tiny": Preset(
        name="tiny",
        large=((64, 64),) * 2,
        small_pairs=5,
        small_side=8,
        transformer=TransformerSpec(32, 2, 64, 1, seq=4, batch=2),
        reps=2,
        warmup_iters=1,
        op_tensor_counts=(4, 16),
        grad_sets=2,
        memory_layouts=("large",),
    ),
}


@dataclass(frozen=True)
class Algo:
    name: str
    torch_cls: type[Optimizer]
    warmopt_cls: Callable[..., Optimizer]
    modes: tuple[str, ...]
    bytes_per_param: int  # torch's minimal traffic per fp32 parameter
    traffic: str


ALGOS: dict[str, Algo] = {
    "adam": Algo(
        "adam", torch.optim.Adam, warmopt.Adam, ("single", "foreach", "fused"), 28,
        "read p,g,exp_avg,exp_avg_sq + write p,exp_avg,exp_avg_sq (7 x 4 B)",
    ),
    "adamw": Algo(
        "adamw", torch.optim.AdamW, warmopt.AdamW, ("single", "foreach", "fused"), 28,
        "read p,g,exp_avg,exp_avg_sq + write p,exp_avg,exp_avg_sq (7 x 4 B)",
    ),
    "rmsprop": Algo(
        "rmsprop", torch.optim.RMSprop, warmopt.RMSprop, ("single", "foreach"), 20,
        "read p,g,square_avg + write p,square_avg (5 x 4 B)",
    ),
}  # fmt: skip
MODES: dict[str, dict[str, bool]] = {
    "single": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
VARIANTS = ("torch", "warming", "sampled", "warmed")
#: ``sampled``: the warming policy measuring its statistics on every 4th step only.
SAMPLE_EVERY = 4
PROBE_BYTES_PER_ELEM = 12  # x.add_(y): read x, read y, write x
#: ops that copy a device value to the host (a host-device sync on an accelerator)
WARMED_PRESTEPS = 4  # Linear(2): scale 1 at step 2, known on the host at step 3


def warming_policy() -> warmopt.WarmupPolicy:
    return warmopt.Measured(tol=0.01)


def build_optimizer(algo: Algo, mode: str, variant: str, params: list[Tensor]) -> Optimizer:
    kwargs: dict[str, Any] = dict(MODES[mode])
    if variant == "torch":
        return algo.torch_cls(params, **kwargs)
    policy: warmopt.WarmupPolicy = warmopt.Linear(2)
    if variant == "warming":
        policy = warming_policy()
    elif variant == "sampled":
        policy = warmopt.Measured(tol=0.01, measure_every=SAMPLE_EVERY)
    return algo.warmopt_cls(params, warmup=policy, **kwargs)


# --------------------------------------------------------------------------- layouts


@dataclass
class Layout:
    name: str
    description: str
    templates: list[Tensor]  # initial parameter values
    grad_sets: list[list[Tensor]]  # grad_sets[k][i]: gradient of tensor i in set k

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.templates)


def _random_layout(
    name: str, description: str, shapes: Sequence[tuple[int, ...]], n_sets: int,
    device: torch.device, gen: torch.Generator,
) -> Layout:  # fmt: skip
    templates = [torch.randn(s, generator=gen).mul_(0.02).to(device) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(device) for s in shapes] for _ in range(n_sets)]
    return Layout(name, description, templates, grads)


def _transformer_layout(spec: TransformerSpec, n_sets: int, device: torch.device) -> Layout:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        spec.d_model, spec.nhead, spec.dim_feedforward, dropout=0.0, batch_first=True
    )
    model = nn.TransformerEncoder(layer, spec.num_layers, enable_nested_tensor=False).to(device)
    params = list(model.parameters())
    grad_sets = []
    for _ in range(n_sets):
        model.zero_grad(set_to_none=True)
        x = torch.randn(spec.batch, spec.seq, spec.d_model, device=device)
        model(x).square().mean().backward()
        grad_sets.append([p.grad.detach().clone() for p in params])  # type: ignore[union-attr]
    templates = [p.detach().clone() for p in params]
    desc = (
        f"nn.TransformerEncoder: {spec.num_layers} layers, d_model {spec.d_model}, "
        f"nhead {spec.nhead}, ff {spec.dim_feedforward}; grads from real backward passes"
    )
    return Layout("transformer", desc, templates, grad_sets)


def make_layouts(preset: Preset, device: torch.device, seed: int) -> Iterator[Layout]:
    """Built lazily, one at a time, so only one layout's tensors are alive."""
    gen = torch.Generator().manual_seed(seed)
    large = preset.large
    yield _random_layout(
        "large", f"{len(large)} matrices {large[0]}", large, preset.grad_sets, device, gen
    )
    side = preset.small_side
    small = [(side, side), (side,)] * preset.small_pairs
    yield _random_layout(
        "small", f"{preset.small_pairs} x ({side},{side}) + {preset.small_pairs} x ({side},)",
        small, preset.grad_sets, device, gen,
    )  # fmt: skip
    yield _transformer_layout(preset.transformer, preset.grad_sets, device)


# --------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    key: str
    algo: str
    mode: str
    variant: str
    step: Callable[[], None]
    set_grads: Callable[[int], None]
    opt: Optimizer | None = None
    times: list[float] = field(default_factory=list)


def _make_candidate(algo: Algo, mode: str, variant: str, layout: Layout) -> Candidate:
    params = [nn.Parameter(t.clone()) for t in layout.templates]
    opt = build_optimizer(algo, mode, variant, params)

    def set_grads(k: int) -> None:
        for p, g in zip(params, layout.grad_sets[k % len(layout.grad_sets)]):
            p.grad = g

    if variant == "warmed":
        for k in range(WARMED_PRESTEPS):
            set_grads(k)
            opt.step()
    return Candidate(
        f"{algo.name}/{mode}/{variant}", algo.name, mode, variant, opt.step, set_grads, opt
    )


def _probe_candidate(layout: Layout) -> Candidate:
    dev = layout.templates[0].device
    x = torch.randn(layout.numel, device=dev)
    y = torch.randn(layout.numel, device=dev)
    return Candidate("probe", "probe", "-", "probe", lambda: x.add_(y), lambda k: None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_rounds(
    candidates: list[Candidate], preset: Preset, rng: random.Random, device: torch.device,
    progress: Callable[[int], None],
) -> None:  # fmt: skip
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(preset.warmup_iters + preset.reps):
            order = list(candidates)
            rng.shuffle(order)
            for c in order:
                c.set_grads(r)
                _sync(device)
                t0 = time.perf_counter()
                c.step()
                _sync(device)
                dt = time.perf_counter() - t0
                if r >= preset.warmup_iters:
                    c.times.append(dt)
            progress(1)
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- statistics


def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def _scale_max(opt: Optimizer | None) -> float | None:
    if not isinstance(opt, warmopt.WarmupOptimizer):
        return None
    scales = [s for s in opt.warmup_scale if s.numel()]
    return float(torch.cat(scales).max()) if scales else None


def _fast_path(opt: Optimizer | None) -> bool | None:
    """Whether warmopt has skipped its warm-up work (host knows all scales are 1)."""
    if not isinstance(opt, warmopt.WarmupOptimizer):
        return None
    return bool(getattr(opt, "_warmup_done", False))


def summarize_block(
    layout: Layout, algo: Algo, candidates: list[Candidate]
) -> list[dict[str, Any]]:
    by_key = {c.key: c for c in candidates}
    probe = by_key["probe"]
    probe_med = statistics.median(probe.times)
    probe_gbps = PROBE_BYTES_PER_ELEM * layout.numel / probe_med / 1e9
    rows = []
    for c in candidates:
        if c.variant == "probe":
            continue
        q1, med, q3 = _quartiles(c.times)
        base = by_key[f"{c.algo}/{c.mode}/torch"]
        paired = [a / b for a, b in zip(c.times, base.times)]
        p1, pmed, p3 = _quartiles(paired)
        gbps = algo.bytes_per_param * layout.numel / med / 1e9
        rows.append(
            {
                "layout": layout.name,
                "optimizer": c.algo,
                "mode": c.mode,
                "variant": c.variant,
                "n": len(c.times),
                "median_ms": med * 1e3,
                "q1_ms": q1 * 1e3,
                "q3_ms": q3 * 1e3,
                "min_ms": min(c.times) * 1e3,
                "max_ms": max(c.times) * 1e3,
                "ratio_vs_torch": pmed,
                "ratio_of_medians": med / statistics.median(base.times),
                "ratio_of_means": statistics.fmean(c.times) / statistics.fmean(base.times),
                "paired_ratio_q1": p1,
                "paired_ratio_q3": p3,
                "gbps": gbps,
                "fraction_of_probe": gbps / probe_gbps,
                "scale_max": _scale_max(c.opt),
                "fast_path": _fast_path(c.opt),
            }
        )
    return rows


# --------------------------------------------------------------------------- ops and syncs


def count_step_ops(
    algo: Algo, mode: str, variant: str, n_tensors: int, device: torch.device
) -> OpCounter:
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.zeros(8, device=device)) for _ in range(n_tensors)]
    opt = build_optimizer(algo, mode, variant, params)
    # warmed: until the host knows warm-up is over; the others: past the lazy state creation
    for _ in range(WARMED_PRESTEPS if variant == "warmed" else 2):
        for p in params:
            p.grad = torch.randn(8, generator=gen).to(device)
        opt.step()
    for p in params:
        p.grad = torch.randn(8, generator=gen).to(device)
    counter = OpCounter()
    with counter:
        opt.step()
    return counter


def measure_ops(
    preset: Preset, device: torch.device, progress: Callable[[int], None]
) -> list[dict[str, Any]]:
    rows = []
    for algo in ALGOS.values():
        for mode in algo.modes:
            for n in preset.op_tensor_counts:
                counted = {v: count_step_ops(algo, mode, v, n, device) for v in VARIANTS}
                base = counted["torch"]
                for v, c in counted.items():
                    top_extra = (c.ops - base.ops).most_common(6)
                    rows.append(
                        {
                            "optimizer": algo.name,
                            "mode": mode,
                            "variant": v,
                            "tensors": n,
                            "ops": c.total,
                            "syncs": c.syncs,
                            "extra_ops": c.total - base.total,
                            "extra_syncs": c.syncs - base.syncs,
                            "same_ops_as_torch": c.ops == base.ops,
                            "top_extra_ops": dict(top_extra),
                        }
                    )
                progress(1)
    return rows


# --------------------------------------------------------------------------- memory


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints a line at every profiler start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _allocation_peak_cpu(step: Callable[[], None]) -> int | None:
    """Peak of (allocated - freed) bytes during ``step``, from the profiler's allocator events."""
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:  # pragma: no cover - very old or stripped torch
        return None
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    results = prof.profiler.kineto_results if prof.profiler is not None else None
    if results is None:
        return None
    allocs: list[Any] = []
    stack = list(results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocs.append(node)
        stack.extend(node.children)
    allocs.sort(key=lambda n: n.start_time_ns)
    live = peak = 0
    for node in allocs:
        live += node.extra_fields.alloc_size
        peak = max(peak, live)
    return peak


def peak_step_bytes(step: Callable[[], None], device: torch.device) -> int | None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return _allocation_peak_cpu(step)


def _state_bytes(opt: Optimizer | None) -> int:
    if opt is None:
        return 0
    return sum(
        v.numel() * v.element_size()
        for st in opt.state.values()
        for v in st.values()
        if isinstance(v, Tensor)
    )


def measure_memory(
    layout: Layout, candidates: list[Candidate], device: torch.device
) -> list[dict[str, Any]]:
    rows = []
    for c in candidates:
        if c.variant == "probe":
            continue
        c.set_grads(0)
        peak = peak_step_bytes(c.step, device)
        rows.append(
            {
                "layout": layout.name,
                "optimizer": c.algo,
                "mode": c.mode,
                "variant": c.variant,
                "peak_extra_bytes": peak,
                "peak_extra_bytes_per_param": None if peak is None else peak / layout.numel,
                "state_bytes": _state_bytes(c.opt),
            }
        )
    return rows


# --------------------------------------------------------------------------- hotspots


def profile_hotspots(
    layout: Layout, candidates: list[Candidate], keys: Iterable[str], top: int = 8
) -> list[dict[str, Any]]:
    """Self time per ATen op of one step of the given candidates (torch.profiler, CPU)."""
    from torch.profiler import ProfilerActivity, profile

    rows = []
    by_key = {c.key: c for c in candidates}
    for key in keys:
        c = by_key.get(key)
        if c is None:
            continue
        c.set_grads(1)
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            c.step()
        events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        for e in events[:top]:
            rows.append(
                {
                    "layout": layout.name,
                    "candidate": key,
                    "op": e.key,
                    "calls": e.count,
                    "self_ms": e.self_cpu_time_total / 1e3,
                    "share": e.self_cpu_time_total / total if total else 0.0,
                }
            )
    return rows


# --------------------------------------------------------------------------- targets


def evaluate_targets(
    timings: list[dict[str, Any]], ops: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    def ratios(opt_names: Iterable[str], mode: str, variant: str) -> list[dict[str, Any]]:
        return [
            r for r in timings
            if r["optimizer"] in opt_names and r["mode"] == mode and r["variant"] == variant
        ]  # fmt: skip

    def timing_target(
        name: str, opts: tuple[str, ...], mode: str, variant: str, limit: float
    ) -> dict[str, Any] | None:
        rows = ratios(opts, mode, variant)
        if not rows:
            return None
        worst = max(rows, key=lambda r: r["ratio_vs_torch"])
        detail = ", ".join(
            f"{r['optimizer']}/{r['layout']} {r['ratio_vs_torch']:.2f}x" for r in rows
        )
        return {
            "target": name,
            "threshold": limit,
            "worst": worst["ratio_vs_torch"],
            "worst_at": f"{worst['optimizer']}/{worst['layout']}",
            "met": worst["ratio_vs_torch"] <= limit,
            "detail": detail,
        }

    out = [
        timing_target(
            "fused warming <= 1.30x torch fused", ("adam", "adamw"), "fused", "warming", 1.30
        ),
        timing_target(
            "fused warmed <= 1.05x torch fused", ("adam", "adamw"), "fused", "warmed", 1.05
        ),
        timing_target(
            "foreach warming <= 1.10x torch foreach", tuple(ALGOS), "foreach", "warming", 1.10
        ),
        timing_target(
            "foreach warmed <= 1.10x torch foreach", tuple(ALGOS), "foreach", "warmed", 1.10
        ),
    ]
    targets = [t for t in out if t is not None]

    for modes, label in ((("foreach", "fused"), "foreach/fused"), (("single",), "single")):
        growth = []
        for algo in ALGOS.values():
            for mode in algo.modes:
                if mode not in modes:
                    continue
                for variant in ("warming", "warmed"):
                    extra = [
                        r["extra_ops"] for r in ops
                        if r["optimizer"] == algo.name and r["mode"] == mode
                        and r["variant"] == variant
                    ]  # fmt: skip
                    # Fewer extra ops for more tensors is not growth: warmopt's own foreach
                    # Adam step skips torch's per-tensor host reads of ``step``.
                    if any(b > a for a, b in itertools.pairwise(extra)):
                        growth.append(f"{algo.name}/{mode}/{variant} {extra}")
        targets.append(
            {
                "target": f"{label}: extra ops per step do not grow with tensor count",
                "threshold": 0,
                "worst": len(growth),
                "worst_at": "; ".join(growth) if growth else "-",
                "met": not growth,
                "detail": "extra ops (warmopt - torch) per tensor count; listed where they grow",
            }
        )
    added = [r for r in ops if r["variant"] != "torch" and r["extra_syncs"] > 0]
    targets.append(
        {
            "target": "0 host syncs added",
            "threshold": 0,
            "worst": max((r["extra_syncs"] for r in added), default=0),
            "worst_at": "; ".join(
                f"{r['optimizer']}/{r['mode']}/{r['variant']}@{r['tensors']}: {r['extra_syncs']:+d}"
                for r in added
            )
            or "-",
            "met": not added,
            "detail": "syncs(warmopt) - syncs(torch) > 0 for any optimizer, mode, tensor count "
            "(negative: warmopt's foreach Adam skips torch's host reads of CPU step counts)",
        }
    )
    return targets


# --------------------------------------------------------------------------- output


def _ms(r: dict[str, Any]) -> str:
    return f"{r['median_ms']:.2f} [{r['q1_ms']:.2f}-{r['q3_ms']:.2f}]"


def _ratio(r: dict[str, Any]) -> str:
    return f"{r['ratio_vs_torch']:.2f} [{r['paired_ratio_q1']:.2f}-{r['paired_ratio_q3']:.2f}]"


def _gb(r: dict[str, Any]) -> str:
    return f"{r['gbps']:.1f} ({100 * r['fraction_of_probe']:.0f}%)"


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# Step cost: warmopt vs torch.optim ({meta['preset']})",
        "",
        f"torch {meta['torch']}, Python {meta['python']}, {meta['machine']}, device "
        f"{meta['device']}, {meta['threads']} thread(s), commit {meta['commit']}; "
        f"{meta['reps']} timed rounds after {meta['warmup_iters']} untimed, candidates shuffled "
        "every round. Times: median [q1-q3] ms. x torch: median [q1-q3] of the per-round "
        "ratio warmopt/torch (same layout and mode, same round). GB/s: torch's minimal traffic "
        "model (Adam/AdamW 28 B/param, RMSprop 20 B/param) over the median, and its share of "
        "the probe (in-place add, 12 B/element).",
        "",
        "## Layouts",
        "",
        "| layout | tensors | params | description | probe GB/s |",
        "|---|---|---|---|---|",
    ]
    for name, lay in result["layouts"].items():
        probe = result["probe"].get(name, {})
        lines.append(
            f"| {name} | {lay['tensors']} | {lay['numel']:,} | {lay['description']} | "
            f"{probe.get('gbps', float('nan')):.1f} |"
        )
    lines += [
        "",
        "## Step time",
        "",
        "| layout | optimizer | mode | torch ms | warming ms | x torch | sampled/4 x torch "
        "| warmed ms | x torch | GB/s torch | GB/s warming | GB/s warmed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    index = {(r["layout"], r["optimizer"], r["mode"], r["variant"]): r for r in result["timings"]}
    for layout in result["layouts"]:
        for algo in ALGOS.values():
            for mode in algo.modes:
                t = index.get((layout, algo.name, mode, "torch"))
                w = index.get((layout, algo.name, mode, "warming"))
                d = index.get((layout, algo.name, mode, "warmed"))
                s = index.get((layout, algo.name, mode, "sampled"))
                if t is None or w is None or d is None:
                    continue
                sampled = _ratio(s) if s else "-"
                lines.append(
                    f"| {layout} | {algo.name} | {mode} | {_ms(t)} | {_ms(w)} | {_ratio(w)} | "
                    f"{sampled} | {_ms(d)} | {_ratio(d)} | {_gb(t)} | {_gb(w)} | {_gb(d)} |"
                )
    warming = [r["scale_max"] for r in result["timings"] if r["variant"] in ("warming", "sampled")]
    fast = [r["fast_path"] for r in result["timings"] if r["variant"] == "warmed"]
    lines += [
        "",
        f"Checks: largest scale of any `warming` candidate after its last timed step: "
        f"{max(warming, default=float('nan')):.3f} (must be < 1); every `warmed` candidate on "
        f"warmopt's fast path (warm-up known to be over): {'yes' if all(fast) else 'NO'}.",
    ]
    counts = meta["op_tensor_counts"]
    head = " / ".join(str(n) for n in counts)
    lines += [
        "",
        f"## ATen ops and host syncs per step (at {head} parameter tensors)",
        "",
        "| optimizer | mode | torch ops | warming ops | warmed ops | warming extra | "
        "torch syncs | warming syncs | warmed syncs | warmed == torch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ops_index = {(r["optimizer"], r["mode"], r["variant"], r["tensors"]): r for r in result["ops"]}

    def series(algo: str, mode: str, variant: str, key: str) -> str:
        return " / ".join(str(ops_index[(algo, mode, variant, n)][key]) for n in counts)

    for algo in ALGOS.values():
        for mode in algo.modes:
            same = all(
                ops_index[(algo.name, mode, "warmed", n)]["same_ops_as_torch"] for n in counts
            )
            lines.append(
                f"| {algo.name} | {mode} | {series(algo.name, mode, 'torch', 'ops')} | "
                f"{series(algo.name, mode, 'warming', 'ops')} | "
                f"{series(algo.name, mode, 'warmed', 'ops')} | "
                f"{series(algo.name, mode, 'warming', 'extra_ops')} | "
                f"{series(algo.name, mode, 'torch', 'syncs')} | "
                f"{series(algo.name, mode, 'warming', 'syncs')} | "
                f"{series(algo.name, mode, 'warmed', 'syncs')} | {'yes' if same else 'NO'} |"
            )
    lines += [
        "",
        f"## Peak extra memory during one step ({meta['memory_method']})",
        "",
        "| layout | optimizer | mode | torch MB | warming MB (B/param) | warmed MB | "
        "state MB torch | state MB warmopt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mem = {(r["layout"], r["optimizer"], r["mode"], r["variant"]): r for r in result["memory"]}

    def mb(x: int | None) -> str:
        return "n/a" if x is None else f"{x / 2**20:.1f}"

    for layout in result["layouts"]:
        for algo in ALGOS.values():
            for mode in algo.modes:
                t = mem.get((layout, algo.name, mode, "torch"))
                w = mem.get((layout, algo.name, mode, "warming"))
                d = mem.get((layout, algo.name, mode, "warmed"))
                if t is None or w is None or d is None:
                    continue
                bpp = w["peak_extra_bytes_per_param"]
                bpp_s = "n/a" if bpp is None else f"{bpp:.1f}"
                lines.append(
                    f"| {layout} | {algo.name} | {mode} | {mb(t['peak_extra_bytes'])} | "
                    f"{mb(w['peak_extra_bytes'])} ({bpp_s}) | {mb(d['peak_extra_bytes'])} | "
                    f"{mb(t['state_bytes'])} | {mb(w['state_bytes'])} |"
                )
    if result["hotspots"]:
        lines += [
            "",
            "## Where a warming step spends its time (torch.profiler, one step; share of the "
            "step's total self CPU time)",
            "",
            "| layout | candidate | op | calls | self ms | share |",
            "|---|---|---|---|---|---|",
        ]
        for h in result["hotspots"]:
            lines.append(
                f"| {h['layout']} | {h['candidate']} | {h['op']} | {h['calls']} | "
                f"{h['self_ms']:.2f} | {100 * h['share']:.0f}% |"
            )
    lines += [
        "",
        "## Issue targets",
        "",
        "| target | worst | at | met | all |",
        "|---|---|---|---|---|",
    ]
    for t in result["targets"]:
        worst = t["worst"]
        worst_s = f"{worst:.2f}x" if isinstance(worst, float) else str(worst)
        met = "yes" if t["met"] else "NO"
        lines.append(f"| {t['target']} | {worst_s} | {t['worst_at']} | {met} | {t['detail']} |")
    return "\n".join(lines) + "\n"


class _Progress:
    """tqdm when installed and wanted, otherwise nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc="step_cost", unit="round", file=sys.stderr)

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.step_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller layouts, 6 rounds (< 1 min)")
    size.add_argument("--tiny", action="store_true", help="toy sizes for the smoke test")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for step_cost.json/.md")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    git_commit()  # stamp the results with the code as it is when the run starts
    args = parse_args(argv)
    preset = PRESETS["tiny" if args.tiny else "quick" if args.quick else "full"]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    started = time.perf_counter()

    n_blocks = 3 * len(ALGOS)
    n_op_cells = sum(len(a.modes) for a in ALGOS.values()) * len(preset.op_tensor_counts)
    progress = _Progress(
        n_blocks * (preset.warmup_iters + preset.reps) + n_op_cells, not args.no_progress
    )
    layouts: dict[str, dict[str, Any]] = {}
    probe: dict[str, dict[str, float]] = {}
    timings: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    hotspots: list[dict[str, Any]] = []
    phase_s: dict[str, float] = {}
    try:
        for layout in make_layouts(preset, device, args.seed):
            layouts[layout.name] = {
                "tensors": len(layout.templates),
                "numel": layout.numel,
                "description": layout.description,
            }
            probe_times: list[float] = []
            t_layout = time.perf_counter()
            for algo in ALGOS.values():
                progress.describe(f"{layout.name}/{algo.name}")
                candidates = [
                    _make_candidate(algo, mode, variant, layout)
                    for mode in algo.modes
                    for variant in VARIANTS
                ]
                candidates.append(_probe_candidate(layout))
                run_rounds(candidates, preset, rng, device, progress)
                timings += summarize_block(layout, algo, candidates)
                probe_times += candidates[-1].times
                if layout.name in preset.memory_layouts:
                    memory += measure_memory(layout, candidates, device)
                if layout.name == "large" and algo.name == "adam" and device.type == "cpu":
                    hotspots += profile_hotspots(
                        layout, candidates, ("adam/fused/warming", "adam/foreach/warming")
                    )
                del candidates
            phase_s[layout.name] = round(time.perf_counter() - t_layout, 1)
            med = statistics.median(probe_times)
            probe[layout.name] = {
                "median_ms": med * 1e3,
                "gbps": PROBE_BYTES_PER_ELEM * layout.numel / med / 1e9,
                "bytes_per_elem": PROBE_BYTES_PER_ELEM,
            }
            del layout
        progress.describe("ops")
        t_ops = time.perf_counter()
        ops = measure_ops(preset, device, progress)
        phase_s["ops"] = round(time.perf_counter() - t_ops, 1)
    finally:
        progress.close()

    result: dict[str, Any] = {
        "meta": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "commit": git_commit(),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "quick": bool(args.quick),
            "preset": preset.name,
            "reps": preset.reps,
            "warmup_iters": preset.warmup_iters,
            "grad_sets": preset.grad_sets,
            "seed": args.seed,
            "op_tensor_counts": list(preset.op_tensor_counts),
            "warming_policy": repr(warming_policy()),
            "warmed_policy": f"Linear(2) after {WARMED_PRESTEPS} untimed steps",
            "bytes_per_param": {a.name: a.bytes_per_param for a in ALGOS.values()},
            "traffic_model": {a.name: a.traffic for a in ALGOS.values()},
            "probe": "x.add_(y) in place over numel(layout) fp32 elements, 12 B/element",
            "memory_method": (
                "torch.cuda.max_memory_allocated - memory_allocated before the step"
                if device.type == "cuda"
                else "CPU allocator events of torch.profiler(profile_memory=True): "
                "peak of allocated - freed during the step"
            ),
            "sync_ops": list(SYNC_OPS),
            "elapsed_s": None,
            "phase_s": phase_s,
        },
        "layouts": layouts,
        "probe": probe,
        "timings": timings,
        "ops": ops,
        "memory": memory,
        "hotspots": hotspots,
    }
    result["targets"] = evaluate_targets(timings, ops)
    result["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_cost.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (args.out / "step_cost.md").write_text(md)
    print(md)
    elapsed = result["meta"]["elapsed_s"]
    print(f"wrote {args.out / 'step_cost.json'} and step_cost.md in {elapsed} s")
    return result


if __name__ == "__main__":
    main()
