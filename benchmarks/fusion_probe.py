"""How fast could a warming Adam step be with the statistics and the scale fused into compiled code?

A measurement, not a change: nothing under ``warmopt/`` is touched. warmopt's warming step today
is torch's own Adam step plus (a) the statistics pass of :func:`warmopt._stats.fresh_ratio_sums`
(six ``torch._foreach_*`` passes over the gradients ``g`` and second moments ``v``), (b) the
policy on 1-D per-tensor vectors and (c) a snapshot of the parameters before torch's step and a
``_foreach_lerp_`` back by ``1 - scale`` after it (``warmopt/_step.py``). This probe times that
step next to torch's and next to ``torch.compile`` versions of the same work.

Candidates (one step each, same gradients, own parameter/state copies)
=======================================================================

* ``torch_fused`` / ``torch_foreach``: ``torch.optim.Adam(fused=True)`` / ``(foreach=True)``, the
  baselines every ratio is taken against.
* ``warmopt_fused`` / ``warmopt_foreach``: ``warmopt.Adam(..., warmup=warmopt.Measured(tol=0.01))``,
  the current warming step (``tol=0.01`` keeps it warming for the whole run; the largest scale
  seen at the end is recorded as ``scale_max`` to prove it).
* ``cstats+fused+lerp``: a compiled statistics function (:func:`stats_fn`, the same per-tensor sums
  as ``fresh_ratio_sums``), then the snapshot, torch's fused Adam and the lerp exactly as
  ``run_group`` does them (fixed scales). ``cstats+fused``: the same without snapshot and lerp, to
  separate the two costs.
* ``cadam``: :func:`update_fn`, one compiled Adam update with a per-tensor scale (a 1-D tensor),
  ``lr``, betas and step counts as tensors (so an LR scheduler does not recompile).
* ``cstats+cadam``: :func:`stats_update_fn`, the statistics (from ``v_{t-1}`` and ``g``, before the
  update) and the scaled update in one compiled function; the scale is an input (it would be the
  previous step's, a one-step lag).
* ``cwarm``: :func:`warming_step_fn`, the whole warming step in one compiled function: statistics,
  ``warmopt.Measured(tol=0.01).update`` on the per-tensor vectors (warmopt's own code, traced) and
  the update with *this* step's scale, as warmopt computes it.
* ``read_probe``: :func:`read_probe_fn`, a compiled per-tensor ``sum(g + v)``: what reading ``g``
  and ``v`` once costs (the statistics' minimal traffic), a bandwidth reference.
* ``policy_eager``: ``Measured.update`` alone, eager, on one entry per tensor (a component, not a
  step: what the policy costs when only the tensor passes are compiled).

The compiled functions loop over the tensors in Python; ``torch.compile(dynamic=False,
fullgraph=True)`` unrolls the loop into one graph and inductor emits one C++ kernel function
(CPU). They keep the step counts as one float32 vector (torch keeps a 0-d tensor per parameter;
``stats_fn`` reads torch's per-parameter tensors). ``lr``, ``betas`` are float64 0-d tensors,
``eps`` a constant. No weight decay, no amsgrad (Adam's defaults). The update follows torch's
single-tensor Adam op for op (``m.lerp_(g, 1 - beta1)``, ``v = beta2 v + (1 - beta2) g^2``,
``p -= lr s / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``), computing in float32 also for bf16
tensors. ``beta ** t`` is written ``exp(t log beta)`` so that inductor computes the per-tensor
coefficients once instead of inside every vectorized iteration (see :func:`_pow`; ``--naive-pow``
measures the difference).

Timing method
-------------
As ``benchmarks/step_cost.py``: all candidates of a layout are built first; then for
``warmup_iters + reps`` rounds every candidate runs one step, in an order shuffled every round
(``random.Random(seed)``), each step timed alone with ``time.perf_counter``; gradients cycle
through ``grad_sets`` pre-computed sets (set outside the timed region); the garbage collector is off
during the rounds; ``torch.set_num_threads(--threads)`` (default 1). Reported: the median step time
with its interquartile range ``[q1-q3]``, and ``x fused`` / ``x foreach``: the median (and IQR)
over rounds of the per-round ratio time(candidate) / time(torch_fused or torch_foreach), which
cancels slow drifts of a shared machine.

Compile time: wall time of the first call of each compiled function (tracing, inductor, the C++
build and one step), per layout; ``torch._dynamo.reset()`` runs before each layout. With the
default inductor caches a second run of the probe finds compiled code on disk; ``--cold-compile``
points ``TORCHINDUCTOR_CACHE_DIR`` at a fresh temporary folder so every compile is cold. In the
full preset ``cached s`` is the first call of a clone of the same function (a new code object, so
dynamo traces again) right after: what a later process pays when inductor's caches hit. Inductor
FX-graph cache hits and misses are recorded.

Checks (per layout, on their own copies)
----------------------------------------
* ``stats``: :func:`stats_fn` vs ``warmopt._stats.fresh_ratio_sums`` on the same ``g``, ``v_{t-1}``
  (after 3 Adam steps), and both vs a float64 evaluation of the same formula.
* ``update``: :func:`update_fn` and :func:`stats_update_fn` after 3 steps vs
  ``torch.optim.Adam(foreach=False)`` with one param group per tensor at ``lr * s_i``; ``lr`` and
  the scales change every step, under ``torch._dynamo.config.error_on_recompile``, and the dynamo
  graph counter must not move: an LR change does not recompile. Reported: the parameters' error
  relative to each tensor's largest entry, their largest elementwise relative error, the share
  of entries outside ``rtol=1e-5`` (and the largest of them: entries near 0), and the error of
  the displacement ``p_3 - p_0`` relative to its largest entry.
* ``warming``: :func:`warming_step_fn` vs ``warmopt.Adam(foreach=False, warmup=Measured(0.01))``
  after 3 steps (parameters, scales and the policy's state: K, evidence, drift, confidence; with
  ``tol=0.01`` the scale depends on the step count alone while K > 0.4 and no drift is
  significant, so the state is where the statistics show), and both vs
  ``torch.optim.Adam(foreach=False)`` at ``lr * s_i`` with warmopt's scales: warmopt's lerp back
  by ``1 - s`` costs one rounding of ``p``, which with small scales is ~1e-4 of the displacement.
  In bf16 a step moves ``p`` by a few ulps, so the displacement error means nothing there.
* ``float lr`` (once): the update compiled with ``lr`` a Python float, called with three values;
  the number of graphs dynamo builds shows what a scheduler would cost without tensor ``lr``.
* Memory: one step of each candidate under ``torch.profiler(profile_memory=True)``: peak of
  allocated - freed CPU bytes during the step (as ``step_cost.py``), and the number of
  ``aten::copy_`` calls: an in-place update that inductor did not re-inplace would show as an
  allocation of the tensors' size and copies back into the inputs.

Usage::

    python -m benchmarks.fusion_probe                  # full: 4 x 2048^2 fp32 and bf16, 400 small
    python -m benchmarks.fusion_probe --cold-compile   # same, every compile from scratch
    python -m benchmarks.fusion_probe --quick          # small sizes, < 1 min with warm caches
    python -m benchmarks.fusion_probe --tiny           # tests/test_fusion_probe_smoke.py
    python -m benchmarks.fusion_probe --quick --naive-pow   # beta ** t with torch.pow
    python -m benchmarks.fusion_probe --layouts small --no-size-asserts   # less per-call overhead

Writes ``benchmarks/results/fusion_probe{,_quick,_tiny}.json`` and ``.md`` (``--out`` for another
folder); ``--naive-pow``, ``--no-size-asserts`` and ``--layouts`` add ``_naivepow``,
``_nosizeasserts`` and the layout names to the file name.

Per-call overhead: inductor's Python wrapper checks every input's size and stride
(``assert_size_stride``) and allocates every per-tensor partial sum, and dynamo's guards check
every input, a few microseconds per tensor; with 400 tensors that is ~2 ms per call, of which the
size asserts are ~1.3 ms (``--no-size-asserts`` removes them; the guards already check sizes and
strides under ``dynamic=False``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import warmopt
from benchmarks._common import git_commit
from benchmarks.step_cost import _quartiles, _quiet_stderr
from warmopt import _stats
from warmopt.policies import Statistics

RESULTS = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class LayoutSpec:
    name: str
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype
    description: str


def _small(pairs: int, side: int) -> tuple[tuple[int, ...], ...]:
    return ((side, side), (side,)) * pairs


@dataclass(frozen=True)
class Preset:
    name: str
    layouts: tuple[LayoutSpec, ...]
    reps: int
    warmup_iters: int
    grad_sets: int = 3
    check_steps: int = 3
    cached_compile: bool = True


def _large(n: int, side: int, dtype: torch.dtype, name: str) -> LayoutSpec:
    kind = "fp32" if dtype == torch.float32 else "bf16"
    return LayoutSpec(name, ((side, side),) * n, dtype, f"{n} x ({side},{side}) {kind}")


def _small_spec(pairs: int, side: int) -> LayoutSpec:
    return LayoutSpec(
        "small",
        _small(pairs, side),
        torch.float32,
        f"{pairs} x ({side},{side}) + {pairs} x ({side},)",
    )


PRESETS: dict[str, Preset] = {
    "full": Preset(
        "full",
        (
            _large(4, 2048, torch.float32, "large"),  # 16.8M params
            _small_spec(200, 100),  # 400 tensors, 2.02M params
            _large(4, 2048, torch.bfloat16, "large_bf16"),
        ),
        reps=25,
        warmup_iters=3,
    ),
    "quick": Preset(
        "quick",
        (_large(4, 1024, torch.float32, "large"), _small_spec(4, 100)),
        reps=8,
        warmup_iters=2,
        cached_compile=False,
    ),
    "tiny": Preset(
        "tiny",
        (LayoutSpec("mixed", ((32, 32), (32,), (8, 4)), torch.float32, "(32,32), (32,), (8,4)"),),
        reps=2,
        warmup_iters=1,
        grad_sets=2,
        check_steps=2,
        cached_compile=False,
    ),
}

LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
#: the fixed per-tensor scale of the candidates that take it as an input
FIXED_SCALE = 0.1
#: ``tol=0.01``: the ops of the default policy, but a warm-up of ~1000 steps at beta2 = 0.999
POLICY = warmopt.Measured(tol=0.01)
POLICY_KEYS = tuple(POLICY.state_init)
BASELINES = ("torch_fused", "torch_foreach")
#: minimal element accesses per parameter of each candidate's design (for GB/s): Adam reads p, g,
#: m, v and writes p, m, v (7); the statistics read g and v again (+2); snapshot + lerp read p,
#: write the copy, read both, write p (+5). warmopt's foreach statistics do more than their model.
ACCESSES: dict[str, int] = {
    "torch_fused": 7, "torch_foreach": 7, "warmopt_fused": 14, "warmopt_foreach": 14,
    "cstats+fused+lerp": 14, "cstats+fused": 9, "cadam": 7, "cstats+cadam": 9, "cwarm": 9,
    "read_probe": 2,
}  # fmt: skip

# --------------------------------------------------------------------------- compiled functions
# Plain functions of lists of tensors; torch.compile unrolls the loops. Each takes the step counts
# *before* this step's increment, as warmopt's statistics do (step t = stored + 1).


#: ``--naive-pow``: write ``beta ** t`` as ``torch.pow`` (see :func:`_pow`).
NAIVE_POW = False


def _pow(base: Tensor, exponent: Tensor) -> Tensor:
    """``base ** exponent`` as ``exp(exponent * log(base))`` (float64, base in (0, 1)).

    Why: inductor's CPU backend inlines a small pointwise computation into every consumer, so a
    per-tensor coefficient such as ``1 - beta2 ** t`` indexed inside a tensor's loop is recomputed
    (``std::pow`` calls in double) on every vectorized iteration; gcc cannot hoist them, and the
    loops run 3-4x slower than with the coefficient loaded from memory. A reused buffer whose
    computation contains ``exp``/``log`` is realized once instead (``should_realize_on_reuse``).
    ``--naive-pow`` runs the probe with ``torch.pow`` to measure the difference.
    """
    if NAIVE_POW:
        return base**exponent
    return torch.exp(exponent * torch.log(base))


def _coefficients(stored_steps: Tensor, beta2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``t``, ``b = 1 - beta2^(t-1)`` and the cap ``1/(w_t b)`` in float64, as warmopt's
    ``_measure`` computes them (``w_t`` from ``warmopt._stats.newest_weight``)."""
    step = stored_steps.double() + 1
    prev_bc = 1 - _pow(beta2, step - 1)
    weight = (1 - beta2) / (1 - _pow(beta2, step))
    return step, prev_bc, 1.0 / (weight * prev_bc)


def _ratio_sums(
    gs: list[Tensor], vs: list[Tensor], prev_bc: Tensor, cap: Tensor
) -> tuple[Tensor, Tensor]:
    """``fresh_ratio_sums``'s formula, in float32 (also for bf16 tensors), one loop per tensor:
    ``q = min(g^2 / max(v, tiny), cap)``; returns ``(b sum q, b^2 sum q^2)`` in float64."""
    sq, sq2 = [], []
    for i, (g, v) in enumerate(zip(gs, vs)):
        g32, v32 = g.float(), v.float()
        q = torch.minimum(g32 * g32 / torch.clamp_min(v32, _stats._TINY), cap[i].float())
        sq.append(q.sum())
        sq2.append((q * q).sum())
    return torch.stack(sq).double() * prev_bc, torch.stack(sq2).double() * prev_bc**2


def _adam_update(
    ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], vs: list[Tensor], step: Tensor,
    scales: Tensor, lr: Tensor, beta1: Tensor, beta2: Tensor, eps: float,
) -> None:  # fmt: skip
    """torch's single-tensor Adam (``foreach=False``) at ``lr * scales[i]``, op for op; ``step``
    is this step's count (float64, one per tensor)."""
    bc1 = 1 - _pow(beta1, step)
    bc2_sqrt = torch.sqrt(1 - _pow(beta2, step))
    # lr * s / bc1, with an exp so that inductor computes it once per tensor (see _pow)
    size = lr * scales.double() * torch.exp(-torch.log(bc1))
    w1, b2, w2 = (1 - beta1).float(), beta2.float(), (1 - beta2).float()
    for i, (p, g, m, v) in enumerate(zip(ps, gs, ms, vs)):
        m.lerp_(g, w1)
        v.mul_(b2).add_(g * g * w2)
        denom = v.sqrt() / bc2_sqrt[i] + eps
        p.sub_(m / denom * size[i])


def stats_fn(
    gs: list[Tensor], vs: list[Tensor], steps: list[Tensor], beta2: Tensor
) -> tuple[Tensor, Tensor]:
    """The statistics alone, from torch's per-parameter 0-d ``step`` tensors."""
    _, prev_bc, cap = _coefficients(torch.stack(steps), beta2)
    return _ratio_sums(gs, vs, prev_bc, cap)


def update_fn(
    ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], vs: list[Tensor], steps: Tensor,
    scales: Tensor, lr: Tensor, beta1: Tensor, beta2: Tensor, eps: float,
) -> None:  # fmt: skip
    """The scaled Adam update alone; increments ``steps`` (1-D float32) in place."""
    step = steps.double() + 1
    steps.add_(1)
    _adam_update(ps, gs, ms, vs, step, scales, lr, beta1, beta2, eps)


def stats_update_fn(
    ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], vs: list[Tensor], steps: Tensor,
    scales: Tensor, lr: Tensor, beta1: Tensor, beta2: Tensor, eps: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Statistics from ``v_{t-1}``, then the update with the given scales (not this step's)."""
    step, prev_bc, cap = _coefficients(steps, beta2)
    sums = _ratio_sums(gs, vs, prev_bc, cap)
    steps.add_(1)
    _adam_update(ps, gs, ms, vs, step, scales, lr, beta1, beta2, eps)
    return sums


def warming_step_fn(
    ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], vs: list[Tensor], steps: Tensor,
    policy_state: Tensor, counts: Tensor, scale_out: Tensor, lr: Tensor, beta1: Tensor,
    beta2: Tensor, eps: float,
) -> None:  # fmt: skip
    """warmopt's whole warming step: statistics, ``Measured.update``, update at this scale.

    ``policy_state`` holds one row per key of ``Measured.state_init`` (float32, one column per
    tensor), updated in place; ``scale_out`` receives the scales.
    """
    step, prev_bc, cap = _coefficients(steps, beta2)
    sum_r, sum_r2 = _ratio_sums(gs, vs, prev_bc, cap)
    valid = ((step >= 2) & (counts > 0)).float()
    state = {k: policy_state[j] for j, k in enumerate(POLICY_KEYS)}
    stats = Statistics(sum_r=sum_r, sum_r2=sum_r2, count=counts, valid=valid)
    scale, new = POLICY.update(state, step, beta2.expand_as(step), stats)
    for j, k in enumerate(POLICY_KEYS):
        policy_state[j].copy_(new[k])
    scale_out.copy_(scale)
    steps.add_(1)
    _adam_update(ps, gs, ms, vs, step, scale, lr, beta1, beta2, eps)


def read_probe_fn(gs: list[Tensor], vs: list[Tensor]) -> Tensor:
    """Per-tensor ``sum(g + v)``: reads ``g`` and ``v`` once, the statistics' minimal traffic (a
    bandwidth reference for the extra pass, not a step)."""
    return torch.stack([(g.float() + v.float()).sum() for g, v in zip(gs, vs)])


def _clone(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """The same function with a new code object: dynamo's cache is per code object, so compiling
    the clone traces again while inductor's caches (keyed by the graph) may hit."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


#: ``--no-size-asserts``: inductor options for every compiled function.
COMPILE_OPTIONS: dict[str, Any] = {}


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(  # type: ignore[no-any-return]
        fn, dynamic=False, fullgraph=True, options=dict(COMPILE_OPTIONS) or None
    )


def _dynamo_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "fxgraph_cache_hit": int(counters["inductor"]["fxgraph_cache_hit"]),
        "fxgraph_cache_miss": int(counters["inductor"]["fxgraph_cache_miss"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


@dataclass
class CompileRecord:
    name: str
    first_call_s: float
    cached_s: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    cached_counts: dict[str, int] = field(default_factory=dict)


def _timed_first_call(fn: Callable[..., Any], args: Sequence[Any]) -> tuple[Any, float, dict]:
    before = _dynamo_counts()
    t0 = time.perf_counter()
    out = fn(*args)
    dt = time.perf_counter() - t0
    after = _dynamo_counts()
    return out, dt, {k: after[k] - before[k] for k in after}


class Compiled:
    """One compiled function per layout, its compile time measured on the first call."""

    def __init__(self, fn: Callable[..., Any], cached: bool) -> None:
        self.source = fn
        self.fn = _compile(fn)
        self.cached = cached
        self.record: CompileRecord | None = None

    def __call__(self, *args: Any) -> Any:
        if self.record is not None:
            return self.fn(*args)
        out, dt, counts = _timed_first_call(self.fn, args)
        self.record = CompileRecord(self.source.__name__, dt, counts=counts)
        if self.cached:
            clone = _compile(_clone(self.source, "cached"))
            _, dt2, counts2 = _timed_first_call(clone, args)  # one more step; harmless
            self.record.cached_s = dt2
            self.record.cached_counts = counts2
        return out


# --------------------------------------------------------------------------- layouts


@dataclass
class Layout:
    spec: LayoutSpec
    templates: list[Tensor]
    grad_sets: list[list[Tensor]]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.templates)

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.dtype


def make_layout(spec: LayoutSpec, n_sets: int, seed: int) -> Layout:
    gen = torch.Generator().manual_seed(seed)
    templates = [torch.randn(s, generator=gen).mul_(0.02).to(spec.dtype) for s in spec.shapes]
    grads = [
        [torch.randn(s, generator=gen).to(spec.dtype) for s in spec.shapes] for _ in range(n_sets)
    ]
    return Layout(spec, templates, grads)


# --------------------------------------------------------------------------- candidates


def _f64(x: float) -> Tensor:
    return torch.tensor(x, dtype=torch.float64)


@dataclass
class OwnAdam:
    """Adam state for the compiled updates: own copies, step counts as one float32 vector."""

    ps: list[Tensor]
    ms: list[Tensor]
    vs: list[Tensor]
    steps: Tensor
    scales: Tensor
    lr: Tensor
    beta1: Tensor
    beta2: Tensor
    policy_state: Tensor
    counts: Tensor
    scale_out: Tensor

    @classmethod
    def create(cls, layout: Layout, scale: float = FIXED_SCALE) -> OwnAdam:
        n = len(layout.templates)
        init = POLICY.initial_state()
        return cls(
            ps=[t.clone() for t in layout.templates],
            ms=[torch.zeros_like(t) for t in layout.templates],
            vs=[torch.zeros_like(t) for t in layout.templates],
            steps=torch.zeros(n),
            scales=torch.full((n,), scale),
            lr=_f64(LR),
            beta1=_f64(BETAS[0]),
            beta2=_f64(BETAS[1]),
            policy_state=torch.tensor([[init[k]] * n for k in POLICY_KEYS], dtype=torch.float32),
            counts=torch.tensor([t.numel() for t in layout.templates], dtype=torch.float32),
            scale_out=torch.zeros(n),
        )

    def update_args(self, gs: list[Tensor]) -> tuple[Any, ...]:
        return (self.ps, gs, self.ms, self.vs, self.steps, self.scales, self.lr, self.beta1,
                self.beta2, EPS)  # fmt: skip

    def warming_args(self, gs: list[Tensor]) -> tuple[Any, ...]:
        return (self.ps, gs, self.ms, self.vs, self.steps, self.policy_state, self.counts,
                self.scale_out, self.lr, self.beta1, self.beta2, EPS)  # fmt: skip


@dataclass
class Candidate:
    key: str
    description: str
    step: Callable[[], Any]
    set_grads: Callable[[int], None]
    scale_max: Callable[[], float | None] = lambda: None
    times: list[float] = field(default_factory=list)


def _torch_candidate(key: str, desc: str, layout: Layout, **kw: Any) -> Candidate:
    params = [nn.Parameter(t.clone()) for t in layout.templates]
    opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS, **kw)

    def set_grads(k: int) -> None:
        for p, g in zip(params, layout.grad_sets[k % len(layout.grad_sets)]):
            p.grad = g

    return Candidate(key, desc, opt.step, set_grads)


def _warmopt_candidate(key: str, desc: str, layout: Layout, **kw: Any) -> Candidate:
    params = [nn.Parameter(t.clone()) for t in layout.templates]
    opt = warmopt.Adam(params, lr=LR, betas=BETAS, eps=EPS, warmup=POLICY, **kw)

    def set_grads(k: int) -> None:
        for p, g in zip(params, layout.grad_sets[k % len(layout.grad_sets)]):
            p.grad = g

    def scale_max() -> float:
        return max(float(s) for group in opt.warmup_scale for s in group)

    return Candidate(key, desc, opt.step, set_grads, scale_max)


def _stats_fused_candidate(
    key: str, desc: str, layout: Layout, stats: Compiled, lerp: bool
) -> Candidate:
    """Compiled statistics + torch's fused Adam (+ warmopt's snapshot and lerp)."""
    params = [nn.Parameter(t.clone()) for t in layout.templates]
    opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS, fused=True)
    beta2 = _f64(BETAS[1])
    keep = list(torch.full((len(params),), 1 - FIXED_SCALE).unbind(0))
    grads: list[list[Tensor]] = [layout.grad_sets[0]]

    def set_grads(k: int) -> None:
        grads[0] = layout.grad_sets[k % len(layout.grad_sets)]
        for p, g in zip(params, grads[0]):
            p.grad = g

    set_grads(0)
    opt.step()  # torch creates the state lazily; the statistics need v_{t-1}
    states = [opt.state[p] for p in params]
    vs = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]

    def step() -> Any:
        sums = stats(grads[0], vs, steps, beta2)
        if lerp:
            with torch.no_grad():  # as inside Optimizer.step
                old = torch._foreach_mul(params, 1.0)
                opt.step()
                torch._foreach_lerp_(params, old, keep)
        else:
            opt.step()
        return sums

    step()  # compiles (timed inside ``stats``)
    return Candidate(key, desc, step, set_grads)


def _own_candidate(
    key: str, desc: str, layout: Layout, compiled: Compiled, warming: bool
) -> Candidate:
    st = OwnAdam.create(layout)
    grads: list[list[Tensor]] = [layout.grad_sets[0]]

    def set_grads(k: int) -> None:
        grads[0] = layout.grad_sets[k % len(layout.grad_sets)]

    if warming:

        def step() -> Any:
            return compiled(*st.warming_args(grads[0]))

        def scale_max() -> float:
            return float(st.scale_out.max())

    else:

        def step() -> Any:
            return compiled(*st.update_args(grads[0]))

        def scale_max() -> float:
            return float(st.scales.max())

    step()  # compiles
    return Candidate(key, desc, step, set_grads, scale_max)


def _read_probe_candidate(layout: Layout, compiled: Compiled) -> Candidate:
    vs = [torch.rand_like(t) for t in layout.templates]
    grads: list[list[Tensor]] = [layout.grad_sets[0]]

    def set_grads(k: int) -> None:
        grads[0] = layout.grad_sets[k % len(layout.grad_sets)]

    def step() -> Any:
        return compiled(grads[0], vs)

    step()  # compiles
    return Candidate(
        "read_probe", "compiled sum(g + v) per tensor: one read of g and v (a reference)", step,
        set_grads,
    )  # fmt: skip


def _policy_candidate(layout: Layout) -> Candidate:
    n = len(layout.templates)
    init = POLICY.initial_state()
    state = {k: torch.full((n,), init[k]) for k in POLICY_KEYS}
    step = torch.full((n,), 10.0, dtype=torch.float64)
    beta = torch.full((n,), BETAS[1], dtype=torch.float64)
    counts = torch.tensor([t.numel() for t in layout.templates], dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    sum_r = counts.double() * (1 + 0.1 * torch.rand(n, generator=gen, dtype=torch.float64))
    stats = Statistics(sum_r, 3 * sum_r, counts, torch.ones(n))

    def run() -> Any:
        scale, new = POLICY.update(state, step, beta, stats)
        state.update(new)
        return scale

    return Candidate(
        "policy_eager",
        "Measured.update alone, eager, one entry per tensor (a component)",
        run,
        lambda k: None,
    )


def build_candidates(layout: Layout, cached: bool) -> tuple[list[Candidate], dict[str, Compiled]]:
    torch._dynamo.reset()
    stats = Compiled(stats_fn, cached)
    update = Compiled(update_fn, cached)
    stats_update = Compiled(stats_update_fn, cached)
    warming = Compiled(warming_step_fn, cached)
    read_probe = Compiled(read_probe_fn, cached)
    cands = [
        _torch_candidate("torch_fused", "torch.optim.Adam(fused=True)", layout, fused=True),
        _torch_candidate("torch_foreach", "torch.optim.Adam(foreach=True)", layout, foreach=True),
        _warmopt_candidate(
            "warmopt_fused", "warmopt.Adam(fused=True, Measured(tol=0.01))", layout, fused=True
        ),
        _warmopt_candidate(
            "warmopt_foreach",
            "warmopt.Adam(foreach=True, Measured(tol=0.01))",
            layout,
            foreach=True,
        ),
        _stats_fused_candidate(
            "cstats+fused+lerp",
            "compiled stats + snapshot + torch fused Adam + lerp",
            layout,
            stats,
            lerp=True,
        ),
        _stats_fused_candidate(
            "cstats+fused",
            "compiled stats + torch fused Adam (no snapshot/lerp)",
            layout,
            stats,
            lerp=False,
        ),
        _own_candidate(
            "cadam", "compiled Adam update with per-tensor scale", layout, update, warming=False
        ),
        _own_candidate(
            "cstats+cadam",
            "compiled stats + scaled update, one function (scale given)",
            layout,
            stats_update,
            warming=False,
        ),
        _own_candidate(
            "cwarm",
            "compiled stats + Measured.update + update at this step's scale",
            layout,
            warming,
            warming=True,
        ),
        _read_probe_candidate(layout, read_probe),
        _policy_candidate(layout),
    ]
    return cands, {c.source.__name__: c for c in (stats, update, stats_update, warming, read_probe)}


# --------------------------------------------------------------------------- timing


def run_rounds(candidates: list[Candidate], preset: Preset, rng: random.Random) -> None:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(preset.warmup_iters + preset.reps):
            order = list(candidates)
            rng.shuffle(order)
            for c in order:
                c.set_grads(r)
                t0 = time.perf_counter()
                c.step()
                dt = time.perf_counter() - t0
                if r >= preset.warmup_iters:
                    c.times.append(dt)
    finally:
        if was_enabled:
            gc.enable()


def summarize(layout: Layout, candidates: list[Candidate]) -> list[dict[str, Any]]:
    by_key = {c.key: c for c in candidates}
    rows = []
    for c in candidates:
        q1, med, q3 = _quartiles(c.times)
        row: dict[str, Any] = {
            "layout": layout.name,
            "candidate": c.key,
            "description": c.description,
            "n": len(c.times),
            "median_ms": med * 1e3,
            "q1_ms": q1 * 1e3,
            "q3_ms": q3 * 1e3,
            "scale_max": c.scale_max(),
            "accesses_per_param": ACCESSES.get(c.key),
            "gbps": (
                ACCESSES[c.key] * layout.templates[0].element_size() * layout.numel / med / 1e9
                if c.key in ACCESSES
                else None
            ),
        }
        for base_key in BASELINES:
            base = by_key[base_key]
            ratios = [t / b for t, b in zip(c.times, base.times)]
            r1, rmed, r3 = _quartiles(ratios)
            short = base_key.removeprefix("torch_")
            row[f"x_{short}"] = rmed
            row[f"x_{short}_q1"] = r1
            row[f"x_{short}_q3"] = r3
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- memory


def profile_step(step: Callable[[], Any]) -> dict[str, Any]:
    """Peak of (allocated - freed) CPU bytes during one step, the largest single allocation and
    the number of ``aten::copy_`` calls, from one ``torch.profiler`` run."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    copies = sum(e.count for e in prof.key_averages() if e.key == "aten::copy_")
    results = prof.profiler.kineto_results if prof.profiler is not None else None
    allocs: list[Any] = []
    stack = list(results.experimental_event_tree()) if results is not None else []
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocs.append(node)
        stack.extend(node.children)
    allocs.sort(key=lambda n: n.start_time_ns)
    live = peak = largest = 0
    for node in allocs:
        size = node.extra_fields.alloc_size
        live += size
        peak = max(peak, live)
        largest = max(largest, size)
    return {"peak_extra_bytes": peak, "largest_alloc_bytes": largest, "copy_calls": copies}


def measure_memory(layout: Layout, candidates: list[Candidate]) -> list[dict[str, Any]]:
    rows = []
    for c in candidates:
        if c.key in ("policy_eager", "read_probe"):
            continue
        c.set_grads(0)
        m = profile_step(c.step)
        m.update(
            layout=layout.name,
            candidate=c.key,
            peak_extra_bytes_per_param=m["peak_extra_bytes"] / layout.numel,
        )
        rows.append(m)
    return rows


# --------------------------------------------------------------------------- checks


def _max_rel(a: Tensor, b: Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return float(((a - b).abs() / scale).max())


def _max_abs_rel(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _rel_err_lists(a: list[Tensor], b: list[Tensor]) -> float:
    """Max over tensors of max |a - b| / max |b|: the error relative to the tensor's scale."""
    worst = 0.0
    for x, y in zip(a, b):
        x, y = x.double(), y.double()
        worst = max(worst, float((x - y).abs().max() / y.abs().max().clamp_min(1e-300)))
    return worst


def _elementwise_rel_err_lists(a: list[Tensor], b: list[Tensor]) -> float:
    """Max elementwise |a - b| / |b| (large where an entry of ``b`` is near 0)."""
    return max(_max_rel(x, y) for x, y in zip(a, b))


RTOL = 1e-5


def _outside_rtol(a: list[Tensor], b: list[Tensor]) -> tuple[float, float]:
    """Share of entries with ``|a - b| > RTOL |b|`` and the largest ``|b|`` among them."""
    bad = total = 0
    worst_ref = 0.0
    for x, y in zip(a, b):
        x, y = x.double(), y.double()
        mask = (x - y).abs() > RTOL * y.abs()
        bad += int(mask.sum())
        total += y.numel()
        if mask.any():
            worst_ref = max(worst_ref, float(y[mask].abs().max()))
    return bad / total, worst_ref


def _compare(a: list[Tensor], b: list[Tensor], start: list[Tensor]) -> dict[str, float]:
    share, worst_ref = _outside_rtol(a, b)
    return {
        "param_share_outside_rtol": share,
        "param_outside_rtol_max_abs_ref": worst_ref,
        "param_rel_err": _rel_err_lists(a, b),
        "param_max_elementwise_rel_err": _elementwise_rel_err_lists(a, b),
        "displacement_rel_err": _rel_err_lists(
            [p.double() - t.double() for p, t in zip(a, start)],
            [p.double() - t.double() for p, t in zip(b, start)],
        ),
    }


def _reference_adam(layout: Layout, scales: list[list[float]], lrs: list[float]) -> list[Tensor]:
    """torch.optim.Adam(foreach=False), one param group per tensor at ``lr * s_i``."""
    params = [nn.Parameter(t.clone()) for t in layout.templates]
    groups = [{"params": [p], "lr": LR} for p in params]
    opt = torch.optim.Adam(groups, betas=BETAS, eps=EPS, foreach=False)
    for k, (lr, s) in enumerate(zip(lrs, scales)):
        for i, (p, g) in enumerate(zip(params, layout.grad_sets[k % len(layout.grad_sets)])):
            p.grad = g
            opt.param_groups[i]["lr"] = lr * s[i]
        opt.step()
    return [p.detach() for p in params]


def check_stats(layout: Layout, stats: Compiled) -> dict[str, Any]:
    """Compiled sums vs fresh_ratio_sums vs a float64 evaluation, after a few Adam steps."""
    params = [nn.Parameter(t.clone()) for t in layout.templates]
    opt = torch.optim.Adam(params, lr=LR, betas=BETAS, eps=EPS, foreach=False)
    k_steps = 3
    for k in range(k_steps):
        for p, g in zip(params, layout.grad_sets[k % len(layout.grad_sets)]):
            p.grad = g
        opt.step()
    gs = layout.grad_sets[k_steps % len(layout.grad_sets)]
    vs = [opt.state[p]["exp_avg_sq"] for p in params]
    steps = [opt.state[p]["step"] for p in params]
    beta2 = _f64(BETAS[1])
    # warmopt's _measure: step and beta in float64, b = 1 - beta^(t-1), w_t = newest_weight
    step = torch.stack(steps).double() + 1
    prev_bc = 1 - beta2 ** (step - 1)
    weight = _stats.newest_weight(step, beta2)
    w_r, w_r2 = _stats.fresh_ratio_sums(gs, vs, prev_bc, weight)
    c_r, c_r2 = stats(gs, vs, steps, beta2)
    d_r, d_r2 = _stats.fresh_ratio_sums(
        [g.double() for g in gs], [v.double() for v in vs], prev_bc, weight
    )
    return {
        "after_steps": k_steps,
        "compiled_vs_warmopt_sum_r": _max_rel(c_r, w_r),
        "compiled_vs_warmopt_sum_r2": _max_rel(c_r2, w_r2),
        "compiled_vs_f64_sum_r": _max_rel(c_r, d_r),
        "compiled_vs_f64_sum_r2": _max_rel(c_r2, d_r2),
        "warmopt_vs_f64_sum_r": _max_rel(w_r, d_r),
        "warmopt_vs_f64_sum_r2": _max_rel(w_r2, d_r2),
        "mean_r_per_coordinate": float((d_r / torch.tensor([g.numel() for g in gs])).mean()),
    }


def check_update(layout: Layout, compiled: Compiled, steps: int) -> dict[str, Any]:
    """Compiled scaled update vs torch.optim.Adam at lr * s; lr and scales change every step,
    which must not recompile."""
    from torch._dynamo.utils import counters

    st = OwnAdam.create(layout)
    n = len(layout.templates)
    gen = torch.Generator().manual_seed(2)
    scales = [(0.05 + 0.9 * torch.rand(n, generator=gen)).tolist() for _ in range(steps)]
    lrs = [LR * (1 + 0.5 * k) for k in range(steps)]
    graphs_before = counters["stats"]["unique_graphs"]
    already = compiled.record is not None
    for k in range(steps):
        st.lr.fill_(lrs[k])
        st.scales.copy_(torch.tensor(scales[k]))
        gs = layout.grad_sets[k % len(layout.grad_sets)]
        if already or k > 0:
            with torch._dynamo.config.patch(error_on_recompile=True):
                compiled(*st.update_args(gs))
        else:
            compiled(*st.update_args(gs))
    new_graphs = counters["stats"]["unique_graphs"] - graphs_before - (0 if already else 1)
    ref = _reference_adam(layout, scales, lrs)
    return {
        "function": compiled.source.__name__,
        "steps": steps,
        "lr_values": lrs,
        "graphs_built_after_first_call": new_graphs,
        **_compare(st.ps, ref, layout.templates),
    }


def check_warming(layout: Layout, compiled: Compiled, steps: int) -> dict[str, Any]:
    """The compiled warming step vs warmopt.Adam(foreach=False, Measured(tol=0.01)), and both vs
    torch.optim.Adam(foreach=False) at lr * s_i with warmopt's scales (``exact``): warmopt moves
    back by ``1 - s`` with a lerp, which costs one rounding of ``p``."""
    st = OwnAdam.create(layout)
    params = [nn.Parameter(t.clone()) for t in layout.templates]
    opt = warmopt.Adam(params, lr=LR, betas=BETAS, eps=EPS, foreach=False, warmup=POLICY)
    scales: list[list[float]] = []
    scale_err = 0.0
    for k in range(steps):
        gs = layout.grad_sets[k % len(layout.grad_sets)]
        compiled(*st.warming_args(gs))
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
        ref_scale = torch.stack([s.float() for s in opt.warmup_scale[0]])
        scale_err = max(scale_err, _max_rel(st.scale_out, ref_scale))
        scales.append(ref_scale.tolist())
    ref = [p.detach() for p in params]
    exact = _reference_adam(layout, scales, [LR] * steps)
    start = layout.templates
    # The policy's state is where the statistics enter (with tol=0.01 the scale itself depends on
    # the step count only while the measured K > 0.4 and no drift is significant).
    state_err = {
        key: _max_abs_rel(
            st.policy_state[j],
            torch.stack([opt.state[p]["warmup_" + key].float() for p in params]),
        )
        for j, key in enumerate(POLICY_KEYS)
    }
    return {
        "steps": steps,
        "scale_max_rel_err": scale_err,
        "policy_state_rel_err": state_err,
        "scale_range": [min(min(s) for s in scales), max(max(s) for s in scales)],
        "compiled_vs_warmopt": _compare(st.ps, ref, start),
        "compiled_vs_exact": _compare(st.ps, exact, start),
        "warmopt_vs_exact": _compare(ref, exact, start),
    }


def check_float_lr() -> dict[str, Any]:
    """How many graphs dynamo builds when ``lr`` is a Python float and changes (dynamic=False)."""
    from torch._dynamo.utils import counters

    fn = _compile(_clone(update_fn, "float_lr"))
    p, g = torch.zeros(16), torch.ones(16)
    m, v = torch.zeros(16), torch.zeros(16)
    steps, scales = torch.zeros(1), torch.ones(1)
    b1, b2 = _f64(BETAS[0]), _f64(BETAS[1])
    before = counters["stats"]["unique_graphs"]
    values = [1e-3, 2e-3, 3e-3]
    for lr in values:
        fn([p], [g], [m], [v], steps, scales, lr, b1, b2, EPS)
    return {
        "lr_values": values,
        "graphs_built": counters["stats"]["unique_graphs"] - before,
        "recompile_limit": torch._dynamo.config.recompile_limit,
    }


# --------------------------------------------------------------------------- output


def _fmt_ms(row: dict[str, Any]) -> str:
    return f"{row['median_ms']:.2f} [{row['q1_ms']:.2f}-{row['q3_ms']:.2f}]"


def _fmt_x(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.2f} [{row[key + '_q1']:.2f}-{row[key + '_q3']:.2f}]"


def _mb(x: float) -> str:
    return f"{x / 2**20:.1f}"


def assess(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each warming candidate against the targets: <= 1.30x torch fused, <= 1.10x foreach."""
    rows = []
    for r in result["timings"]:
        if r["candidate"] in ("torch_fused", "torch_foreach", "policy_eager", "read_probe"):
            continue
        rows.append(
            {
                "layout": r["layout"],
                "candidate": r["candidate"],
                "x_fused": r["x_fused"],
                "meets_fused_1.30": r["x_fused"] <= 1.30,
                "x_foreach": r["x_foreach"],
                "meets_foreach_1.10": r["x_foreach"] <= 1.10,
            }
        )
    return rows


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# Fusion probe: compiled warming Adam step vs torch.optim ({meta['preset']})",
        "",
        f"torch {meta['torch']}, Python {meta['python']}, {meta['machine']}, {meta['platform']}, "
        f"{meta['threads']} thread(s), commit {meta['commit']}; {meta['reps']} timed rounds after "
        f"{meta['warmup_iters']} untimed, candidates shuffled every round. Command: "
        f"`{meta['command']}`; {meta['elapsed_s']} s. Inductor cache: {meta['inductor_cache']}; "
        f"options: {meta['inductor_options'] or 'defaults'}.",
        "",
        "Times: median [q1-q3] ms of one step. `x fused` / `x foreach`: median [q1-q3] over rounds "
        "of the per-round ratio time(candidate) / time(torch Adam fused / foreach). Targets for a "
        "warming step: <= 1.30x torch fused, <= 1.10x torch foreach. `policy_eager` and "
        "`read_probe` are components, not steps. GB/s: the minimal element accesses per "
        "parameter of the candidate's design (in brackets: Adam 7, + statistics 2, + snapshot and "
        "lerp 5; warmopt's foreach statistics do more) x element size x params / median.",
        "",
        "## Layouts",
        "",
        "| layout | tensors | params | dtype | description |",
        "|---|---|---|---|---|",
    ]
    for name, lay in result["layouts"].items():
        lines.append(
            f"| {name} | {lay['tensors']} | {lay['numel']:,} | {lay['dtype']} | "
            f"{lay['description']} |"
        )
    for name in result["layouts"]:
        lines += [
            "",
            f"## Step time: {name}",
            "",
            "| candidate | ms | x fused | x foreach | GB/s (accesses) | scale_max | what |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["timings"]:
            if r["layout"] != name:
                continue
            sm = "" if r["scale_max"] is None else f"{r['scale_max']:.3f}"
            bw = "" if r["gbps"] is None else f"{r['gbps']:.1f} ({r['accesses_per_param']})"
            lines.append(
                f"| {r['candidate']} | {_fmt_ms(r)} | {_fmt_x(r, 'x_fused')} | "
                f"{_fmt_x(r, 'x_foreach')} | {bw} | {sm} | {r['description']} |"
            )
    lines += [
        "",
        "## Compile time (first call, includes one step)",
        "",
        "`cached s`: the first call of a clone of the function (dynamo traces again; inductor's "
        "caches may hit). hit/miss: inductor FX graph cache on the first call.",
        "",
        "| layout | function | first call s | cached s | FX cache hit/miss | graphs | "
        "graph breaks |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["compile"]:
        cached = "n/a" if c["cached_s"] is None else f"{c['cached_s']:.1f}"
        k = c["counts"]
        lines.append(
            f"| {c['layout']} | {c['function']} | {c['first_call_s']:.1f} | {cached} | "
            f"{k.get('fxgraph_cache_hit', 0)}/{k.get('fxgraph_cache_miss', 0)} | "
            f"{k.get('unique_graphs', 0)} | {k.get('graph_breaks', 0)} |"
        )
    lines += [
        "",
        "## Numerical agreement",
        "",
        "Statistics after 3 Adam steps (max relative difference over tensors):",
        "",
        "| layout | sum_r compiled vs warmopt | sum_r2 compiled vs warmopt | sum_r compiled vs "
        "f64 | sum_r2 compiled vs f64 | sum_r warmopt vs f64 | sum_r2 warmopt vs f64 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ch in result["checks"].items():
        s = ch["stats"]
        lines.append(
            f"| {name} | {s['compiled_vs_warmopt_sum_r']:.2e} | "
            f"{s['compiled_vs_warmopt_sum_r2']:.2e} | {s['compiled_vs_f64_sum_r']:.2e} | "
            f"{s['compiled_vs_f64_sum_r2']:.2e} | {s['warmopt_vs_f64_sum_r']:.2e} | "
            f"{s['warmopt_vs_f64_sum_r2']:.2e} |"
        )
    lines += [
        "",
        "Updates vs torch.optim.Adam(foreach=False) at lr * s_i (lr and s change every step; "
        "`graphs` = graphs dynamo built after the first call, 0 = no recompile), and the compiled "
        "warming step vs warmopt.Adam(foreach=False, Measured(tol=0.01)) and both against torch "
        "at lr * s with warmopt's scales. Errors: max over tensors of max |a - b| / max |b| for "
        "the parameters and for the displacement p_k - p_0; the elementwise max |a - b| / |b| of "
        "the parameters is dominated by entries near 0: `outside rtol` is the share of entries "
        "with |a - b| > 1e-5 |b| and the largest |b| among them. With small scales the "
        "displacement is a few hundred float32 ulps of p, so one ulp of rounding is ~1e-5-1e-4 "
        "of it; in bf16 a step moves p by a few ulps, so the displacement error means nothing "
        "there.",
        "",
        "| layout | compared | steps | graphs | params err | params max elementwise err | "
        "outside rtol 1e-5 (max abs ref) | displacement err | scale max rel err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cmp_cells(c: dict[str, float]) -> str:
        return (
            f"{c['param_rel_err']:.2e} | {c['param_max_elementwise_rel_err']:.2e} | "
            f"{c['param_share_outside_rtol']:.1e} ({c['param_outside_rtol_max_abs_ref']:.1e}) | "
            f"{c['displacement_rel_err']:.2e}"
        )

    for name, ch in result["checks"].items():
        for u in ch["updates"]:
            lines.append(
                f"| {name} | {u['function']} vs torch at lr*s | {u['steps']} | "
                f"{u['graphs_built_after_first_call']} | {cmp_cells(u)} | |"
            )
        w = ch["warming"]
        for key, label in (
            ("compiled_vs_warmopt", "warming_step_fn vs warmopt"),
            ("compiled_vs_exact", "warming_step_fn vs torch at lr*s"),
            ("warmopt_vs_exact", "warmopt vs torch at lr*s"),
        ):
            se = f"{w['scale_max_rel_err']:.2e}" if key == "compiled_vs_warmopt" else ""
            lines.append(f"| {name} | {label} | {w['steps']} | | {cmp_cells(w[key])} | {se} |")
    lines += [
        "",
        "Policy state after the same steps, compiled vs warmopt (max |a - b| / max |b| over "
        "tensors; the state is where the statistics enter the scale):",
        "",
        "| layout | " + " | ".join(POLICY_KEYS) + " |",
        "|---|" + "---|" * len(POLICY_KEYS),
    ]
    for name, ch in result["checks"].items():
        errs = ch["warming"]["policy_state_rel_err"]
        lines.append(f"| {name} | " + " | ".join(f"{errs[k]:.2e}" for k in POLICY_KEYS) + " |")
    fl = result["float_lr"]
    lines += [
        "",
        f"Python-float `lr` (dynamic=False), values {fl['lr_values']}: dynamo built "
        f"{fl['graphs_built']} graph(s) (recompile_limit {fl['recompile_limit']}; past it dynamo "
        "falls back to eager). With `lr` a 0-d tensor: see `graphs` above.",
        "",
        "## Memory during one step (torch.profiler allocator events)",
        "",
        "| layout | candidate | peak extra MB (B/param) | largest alloc MB | aten::copy_ calls |",
        "|---|---|---|---|---|",
    ]
    for m in result["memory"]:
        lines.append(
            f"| {m['layout']} | {m['candidate']} | {_mb(m['peak_extra_bytes'])} "
            f"({m['peak_extra_bytes_per_param']:.2f}) | {_mb(m['largest_alloc_bytes'])} | "
            f"{m['copy_calls']} |"
        )
    lines += [
        "",
        "## Against the targets",
        "",
        "| layout | candidate | x fused | <= 1.30 | x foreach | <= 1.10 |",
        "|---|---|---|---|---|---|",
    ]
    for a in result["assessment"]:
        lines.append(
            f"| {a['layout']} | {a['candidate']} | {a['x_fused']:.2f} | "
            f"{'yes' if a['meets_fused_1.30'] else 'no'} | {a['x_foreach']:.2f} | "
            f"{'yes' if a['meets_foreach_1.10'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.fusion_probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small layouts, 8 rounds (< 1 min)")
    size.add_argument("--tiny", action="store_true", help="toy sizes for the smoke test")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layouts", nargs="*", help="only these layouts of the preset")
    ap.add_argument(
        "--cold-compile", action="store_true", help="a fresh, empty inductor cache folder"
    )
    ap.add_argument(
        "--naive-pow", action="store_true", help="beta ** t as torch.pow in the compiled code"
    )
    ap.add_argument(
        "--no-size-asserts",
        action="store_true",
        help="inductor option size_asserts=False (no per-input stride checks in the wrapper)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON/markdown")
    return ap.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[fusion_probe] {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    git_commit()  # stamp the results with the code as it is when the run starts
    args = parse_args(argv)
    preset = PRESETS["tiny" if args.tiny else "quick" if args.quick else "full"]
    started = time.perf_counter()
    cache_note = "default (may hold earlier compiles)"
    tmp_cache: tempfile.TemporaryDirectory[str] | None = None
    old_env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if args.cold_compile:
        tmp_cache = tempfile.TemporaryDirectory(prefix="fusion_probe_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp_cache.name
        cache_note = "fresh temporary folder (--cold-compile)"
    global NAIVE_POW
    NAIVE_POW = bool(args.naive_pow)
    COMPILE_OPTIONS.clear()
    if args.no_size_asserts:
        COMPILE_OPTIONS["size_asserts"] = False
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    specs = [s for s in preset.layouts if not args.layouts or s.name in args.layouts]

    layouts: dict[str, dict[str, Any]] = {}
    timings: list[dict[str, Any]] = []
    compile_rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    checks: dict[str, dict[str, Any]] = {}
    phase_s: dict[str, float] = {}
    try:
        for spec in specs:
            t_layout = time.perf_counter()
            layout = make_layout(spec, preset.grad_sets, args.seed)
            layouts[spec.name] = {
                "tensors": len(layout.templates),
                "numel": layout.numel,
                "dtype": str(spec.dtype).removeprefix("torch."),
                "description": spec.description,
            }
            _log(f"{spec.name}: building and compiling")
            candidates, compiled = build_candidates(layout, preset.cached_compile)
            for c in compiled.values():
                assert c.record is not None
                compile_rows.append(
                    {
                        "layout": spec.name,
                        "function": c.record.name,
                        "first_call_s": c.record.first_call_s,
                        "cached_s": c.record.cached_s,
                        "counts": c.record.counts,
                        "cached_counts": c.record.cached_counts,
                    }
                )
                _log(
                    f"  {c.record.name}: {c.record.first_call_s:.1f} s"
                    + ("" if c.record.cached_s is None else f" (cached {c.record.cached_s:.1f} s)")
                )
            graphs_before = _dynamo_counts()["unique_graphs"]
            _log(f"{spec.name}: {preset.warmup_iters + preset.reps} rounds")
            run_rounds(candidates, preset, rng)
            graphs_during = _dynamo_counts()["unique_graphs"] - graphs_before
            timings += summarize(layout, candidates)
            memory += measure_memory(layout, candidates)
            _log(f"{spec.name}: checks")
            checks[spec.name] = {
                "stats": check_stats(layout, compiled["stats_fn"]),
                "updates": [
                    check_update(layout, compiled["update_fn"], preset.check_steps),
                    check_update(layout, compiled["stats_update_fn"], preset.check_steps),
                ],
                "warming": check_warming(layout, compiled["warming_step_fn"], preset.check_steps),
                "graphs_built_during_timing": graphs_during,
            }
            phase_s[spec.name] = round(time.perf_counter() - t_layout, 1)
            del candidates, compiled, layout
        float_lr = check_float_lr()
    finally:
        torch.set_num_threads(threads)
        NAIVE_POW = False
        COMPILE_OPTIONS.clear()
        if tmp_cache is not None:
            if old_env is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old_env
            tmp_cache.cleanup()

    flags = ["--tiny"] if args.tiny else ["--quick"] if args.quick else []
    if args.cold_compile:
        flags.append("--cold-compile")
    if args.naive_pow:
        flags.append("--naive-pow")
    if args.no_size_asserts:
        flags.append("--no-size-asserts")
    if args.layouts:
        flags += ["--layouts", *args.layouts]
    if args.threads != 1:
        flags += ["--threads", str(args.threads)]
    result: dict[str, Any] = {
        "meta": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "commit": git_commit(),
            "threads": args.threads,
            "preset": preset.name,
            "reps": preset.reps,
            "warmup_iters": preset.warmup_iters,
            "grad_sets": preset.grad_sets,
            "seed": args.seed,
            "command": " ".join(["python -m benchmarks.fusion_probe", *flags]),
            "inductor_cache": cache_note,
            "policy": repr(POLICY),
            "fixed_scale": FIXED_SCALE,
            "hyperparameters": {"lr": LR, "betas": list(BETAS), "eps": EPS},
            "compile_options": {"dynamic": False, "fullgraph": True},
            "naive_pow": bool(args.naive_pow),
            "inductor_options": {"size_asserts": False} if args.no_size_asserts else {},
            "elapsed_s": None,
            "phase_s": phase_s,
        },
        "layouts": layouts,
        "timings": timings,
        "compile": compile_rows,
        "checks": checks,
        "float_lr": float_lr,
        "memory": memory,
    }
    result["assessment"] = assess(result)
    result["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)

    stem = "fusion_probe" + ("_naivepow" if args.naive_pow else "")
    stem += "_nosizeasserts" if args.no_size_asserts else ""
    stem += "".join(f"_{name}" for name in args.layouts or [])
    stem += "_tiny" if args.tiny else "_quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {args.out / (stem + '.json')} and {stem}.md in {result['meta']['elapsed_s']} s")
    return result


if __name__ == "__main__":
    main()
