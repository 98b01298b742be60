"""Stage 3, advance: the policy, once for all units, and the new numbers written to the state.

One call of the policy's pure ``update`` serves every tensor (granularity ``"tensor"``) or every
unit (``"group"``/``"global"``: the tensors' numbers pooled into units first, the way the
policy's :class:`~warmopt.policies.MeasurementSpec` says each key pools, the unit's result handed
back to each of its tensors). A GradScaler step with inf/NaN gradients (``found_inf``) keeps the
old numbers. The host learns that every scale reached 1 without a sync (``Book.done_flag``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ._collect import Book, Warming
from ._stats import POOLING, Statistics
from .policies import WarmupPolicy

__all__ = ["GRANULARITIES", "advance", "unit_index"]

#: Units the scale is computed for: each parameter tensor, each param group, or the whole optimizer.
GRANULARITIES = ("tensor", "group", "global")


def unit_index(
    granularity: str, counts: list[int], home: torch.device
) -> tuple[Tensor | None, int]:
    """Unit index of each tensor for group/global granularity (``None`` for per tensor), and the
    number of units; ``counts`` holds each group's number of tensors."""
    if granularity == "tensor":
        return None, 0
    if granularity == "global":
        return torch.zeros(sum(counts), dtype=torch.long, device=home), 1
    ids = [gi for gi, n in enumerate(counts) for _ in range(n)]
    return torch.tensor(ids, device=home), len(counts)


def advance(
    policy: WarmupPolicy,
    warming: Warming,
    stats: Statistics | None,
    granularity: str,
    bias_corrected: bool,
    found_inf: Tensor | None,
    book: Book,
) -> Tensor:
    """Run the policy for this step, store its numbers, and return the per-tensor scales."""
    if not warming.params:
        return warming.step.float()
    old, step, beta = warming.old, warming.step, warming.beta
    keys = list(policy.state_init)
    units, n_units = unit_index(granularity, warming.counts, warming.home)
    if units is None:
        scale, new = policy.update(
            {k: old[k] for k in keys}, step, beta, stats, bias_corrected=bias_corrected
        )
    else:
        scale, new = _pooled_update(policy, old, step, beta, stats, units, n_units, bias_corrected)
    new["scale"] = scale
    skipped = None
    if found_inf is not None:
        skipped = found_inf.to(warming.home, torch.float32, non_blocking=True) > 0
    scale = warming.store(new, skipped)
    if not policy.spec.can_fall or policy.spec.watch > 1:
        done = (scale >= 1.0).all()
        if warming.paused is not None:  # a tensor without a gradient now is not done for it
            done = done & (warming.paused >= 1.0).all()
        book.done_flag.publish(done, keep=policy.spec.can_fall)
    return scale


def _pooled_update(
    policy: WarmupPolicy,
    old: dict[str, Tensor],
    step: Tensor,
    beta: Tensor,
    stats: Statistics | None,
    units: Tensor,
    n_units: int,
    bias_corrected: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run the policy once per unit: sums add up, the unit is as young as its youngest tensor,
    as slow as its slowest (largest beta), and each changing number pools as the policy's
    spec says."""

    def reduce(v: Tensor, how: str) -> Tensor:
        init = {"sum": 0.0, "amin": math.inf, "amax": -math.inf, "mean": 0.0}[how]
        out = torch.full((n_units,), init, dtype=v.dtype, device=v.device)
        return out.scatter_reduce(0, units, v, reduce=how, include_self=how == "sum")

    pooled_stats = None
    if stats is not None:
        fields = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
        present = {k: v for k, v in fields.items() if v is not None}
        pooled = {}
        for name, value in present.items():
            how = POOLING[name]
            if how == "amax":
                pooled[name] = reduce(value, "amax")
            else:  # a sum over the tensors that count ("valid")
                weight = present.get(how)
                pooled[name] = reduce(value if weight is None else value * weight, "sum")
        pooled_stats = Statistics(**pooled)
    how = policy.spec.pooling
    state = {k: reduce(old[k], how.get(k, "amin")) for k in policy.state_init}
    scale, new = policy.update(
        state, reduce(step, "amin"), reduce(beta, "amax"), pooled_stats,
        bias_corrected=bias_corrected,
    )  # fmt: skip
    return scale[units], {k: v[units] for k, v in new.items()}
