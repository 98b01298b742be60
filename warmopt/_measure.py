"""Stage 2, measure: the fresh-ratio statistics of every tensor, tensors in, ``Statistics`` out.

Pure: it reads gradients, second moments (before this step's update) and, for coupled weight
decay, parameters; it writes nothing. Windows of ``sample`` coordinates per tensor, the count of
real coordinates, and the all-reduce of sums over FSDP2 shards live here.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _stats
from ._algorithms import GroupBatch, real_views
from ._device import split_to
from ._stats import Statistics

__all__ = ["measure", "staggered"]


def staggered(groups: list[dict[str, Any]], params: list[Tensor], every: int, calls: int) -> (
    list[bool] | None
):
    """Which of ``params`` to measure on warming call number ``calls`` (from 0) under
    ``measure_every=every``: tensor number ``j`` (in ``param_groups`` order) on calls
    ``j + 1, j + 1 + every, ...`` (call 0 is step 1, which has nothing to measure against).
    ``None``: all of them."""
    if every <= 1:
        return None
    number = {id(q): j for j, q in enumerate(q for g in groups for q in g["params"])}
    return [(calls - 1 - number[id(q)]) % every == 0 for q in params]


def measure(
    batches: list[GroupBatch],
    modes: list[str],
    decays: list[float],
    step: Tensor,
    beta: Tensor,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    home: torch.device,
    every: int = 1,
    size: int | None = None,
    pick: list[bool] | None = None,
    cpu_is_host: bool = True,
) -> Statistics:
    """Fresh-ratio sums for every tensor, in the same order as ``step``.

    ``decays`` holds each group's coupled decay (``Algorithm.coupled_decay``). With ``size``,
    each plain tensor longer than that is measured on a window of ``size`` coordinates chosen by
    its step count (``_stats.window_starts``; see ``_windows``); DTensor shards are measured
    whole. With ``pick`` (one flag per tensor) only the flagged tensors are measured; the others
    get zero sums and ``valid = 0``.
    """
    prev_bc = 1 - beta ** (step - 1)
    weight = _stats.newest_weight(step, beta)
    inv_gs2 = None
    if grad_scale is not None:
        inv_gs2 = grad_scale.to(torch.float32).reciprocal().square()
    parts_r: list[Tensor] = []
    parts_r2: list[Tensor] = []
    order: list[int] = []
    offset = 0
    for mode, batch, decay in zip(modes, batches, decays):
        n = len(batch.params)
        chosen = list(range(n))
        if pick is not None:
            chosen = [i for i in chosen if pick[offset + i]]
            if len(chosen) < n:
                batch = batch.select(chosen)
        if not chosen:
            offset += n
            continue
        grads = _local_shards(real_views(batch.grads, batch.has_complex))
        sqs = _local_shards(real_views(batch.second_moments, batch.has_complex))
        ps = _local_shards(real_views(batch.params, batch.has_complex))
        if size is not None:
            dtensor = _dtensor_type()
            cut = [
                g.numel() > size and not (dtensor is not None and isinstance(g0, dtensor))
                for g0, g in zip(batch.grads, grads)
            ]
            if any(cut):
                mine = (
                    step[offset : offset + n]
                    if len(chosen) == n
                    else step[torch.tensor([offset + i for i in chosen])]
                )
                grads, sqs, ps = _windows(
                    [grads, sqs, ps], cut, mine, size, every, decay, cpu_is_host
                )
        if mode == "single" and size is None:
            # every coordinate measured: one tensor at a time keeps the temporaries to one
            # tensor, as torch's single-tensor step does; with windows they are bounded by
            # ``size`` per tensor and one foreach call serves them all
            buckets = [([[g], [v], [p]], [i]) for i, (g, v, p) in enumerate(zip(grads, sqs, ps))]
        else:
            grouped = Optimizer._group_tensors_by_device_and_dtype(
                [grads, sqs, ps],  # type: ignore[list-item]
                with_indices=True,
            )
            buckets = list(grouped.values())  # type: ignore[arg-type]
        for (g_all, v_all, p_all), idx_all in buckets:
            dev = g_all[0].device
            gs = None if inv_gs2 is None else inv_gs2.to(dev)
            for sub, stacked in _stat_calls(g_all, cpu_is_host):
                idx = [idx_all[j] for j in sub]
                sel = torch.tensor([offset + chosen[i] for i in idx], device=home)
                s_r, s_r2 = _stats.fresh_ratio_sums(
                    [g_all[j] for j in sub],
                    [v_all[j] for j in sub],
                    prev_bc[sel].to(dev),
                    weight[sel].to(dev),
                    gs,
                    params=[p_all[j] for j in sub],
                    coupled_decay=decay,
                    stacked=stacked,
                )
                if _dtensor_type() is not None:
                    s_r, s_r2 = _sum_over_shards(s_r, s_r2, [batch.grads[i] for i in idx])
                parts_r.append(s_r.to(home))
                parts_r2.append(s_r2.to(home))
                order.extend(offset + chosen[i] for i in idx)
        offset += n
    if order:
        where = torch.tensor(order).to(home, non_blocking=True)
        got_r, got_r2 = torch.cat(parts_r), torch.cat(parts_r2)
        sum_r = got_r.new_zeros(len(step)).index_copy_(0, where, got_r)
        sum_r2 = got_r2.new_zeros(len(step)).index_copy_(0, where, got_r2)
    else:
        sum_r = sum_r2 = torch.zeros(len(step), dtype=torch.float64, device=home)
    count = _counts(batches, home, size)
    valid = ((step >= 2) & (count > 0)).float()
    if pick is not None:
        valid = valid * torch.tensor(pick, dtype=torch.float32).to(home, non_blocking=True)
    if found_inf is not None:
        valid = valid * (found_inf.to(home, torch.float32) == 0).float()
    return Statistics(sum_r=sum_r, sum_r2=sum_r2, count=count, valid=valid)


def _windows(
    lists: list[list[Tensor]],
    cut: list[bool],
    step: Tensor,
    size: int,
    every: int,
    decay: float,
    cpu_is_host: bool,
) -> list[list[Tensor]]:
    """``lists`` (gradients, second moments, parameters) with each ``cut`` tensor replaced by
    its measured window; parameters only where coupled decay reads them. Views when the
    step counts are on the CPU (the starts are then read on the host at no cost), gathers
    on the device otherwise (no host read)."""
    which = [i for i, c in enumerate(cut) if c]
    like = [lists[0][i] for i in which]
    numel = torch.tensor([t.numel() for t in like], dtype=torch.float64)
    pick = torch.tensor(which).to(step.device, non_blocking=True)
    starts = _stats.window_starts(step[pick], numel.to(step.device, non_blocking=True), size, every)
    out = [list(ts) for ts in lists]
    # the statistics read the parameters only with coupled decay
    windowed = list(zip(out, lists))[: 3 if decay != 0.0 else 2]
    if cpu_is_host and step.device.type == "cpu":
        # Starts readable on the host for free: the windows are views, no gather.
        for start, i in zip(starts.tolist(), which):
            for ts, src in windowed:
                t = src[i]
                if t.is_contiguous():  # one view op instead of a reshape and a slice
                    ts[i] = t.as_strided((size,), (1,), t.storage_offset() + start)
                else:
                    ts[i] = t.reshape(-1)[start : start + size]
        return out
    starts_on = split_to(starts, like)
    bases: dict[torch.device, Tensor] = {}
    for k, i in enumerate(which):
        dev = like[k].device
        if dev not in bases:
            bases[dev] = torch.arange(size, device=dev)
        index = bases[dev] + starts_on[k]
        for ts, src in windowed:
            ts[i] = _stats.take_window(src[i], index)
    return out


def _counts(batches: list[GroupBatch], home: torch.device, size: int | None = None) -> Tensor:
    """Real coordinates measured per tensor (complex counts twice), float32 on ``home``:
    all of them, or at most ``size`` for plain (non-DTensor) tensors."""
    counts = [
        g.numel() * (2 if b.has_complex and torch.is_complex(g) else 1)
        for b in batches
        for g in b.grads
    ]
    if size is not None:
        dtensor = _dtensor_type()
        if dtensor is None:
            counts = [min(n, size) for n in counts]
        else:
            grads = [g for b in batches for g in b.grads]
            counts = [
                n if n <= size or isinstance(g, dtensor) else size for n, g in zip(counts, grads)
            ]
    return torch.tensor(counts, dtype=torch.float32).to(home, non_blocking=True)


def _stat_calls(ts: list[Tensor], cpu_is_host: bool = True) -> list[tuple[list[int], bool]]:
    """How to measure one bucket (same device and dtype): ``(positions, stacked)`` per call of
    ``fresh_ratio_sums``. On the CPU tensors of at most ``STACK_MAX_NUMEL`` elements that share
    a shape with another are stacked (one call per shape, a kernel per pass rather than per
    tensor); everything else, and everything on accelerators (where a foreach op is already a
    few multi-tensor kernels), goes through one foreach call."""
    if not (cpu_is_host and ts[0].device.type == "cpu"):
        return [(list(range(len(ts))), False)]
    shapes: dict[torch.Size, list[int]] = {}
    rest: list[int] = []
    for j, t in enumerate(ts):
        if t.numel() <= _stats.STACK_MAX_NUMEL:
            shapes.setdefault(t.shape, []).append(j)
        else:
            rest.append(j)
    calls = []
    for js in shapes.values():
        if len(js) >= 2:
            calls.append((js, True))
        else:
            rest.extend(js)
    if rest:
        calls.append((sorted(rest), False))
    return calls


def _dtensor_type() -> type | None:
    """``DTensor`` if torch.distributed.tensor is loaded (no DTensor can exist before that)."""
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def _local_shards(ts: list[Tensor]) -> list[Tensor]:
    """This rank's shards of DTensors (FSDP2 parameters); other tensors as they are."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return ts
    return [t.to_local() if isinstance(t, dtensor) else t for t in ts]  # type: ignore[attr-defined]


def _sum_over_shards(s_r: Tensor, s_r2: Tensor, like: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Sums over this rank's shards of ``like`` -> sums over the whole tensors, on every rank.

    FSDP2 (DTensor) parameters are sharded across ranks: without this all-reduce each rank would
    measure only its shard and step its part of a tensor with its own scale (and the DTensor sums
    would not mix with the plain tensors of the policy). One all-reduce per distinct layout.
    """
    dtensor = _dtensor_type()
    if dtensor is None or not any(isinstance(t, dtensor) for t in like):
        return s_r, s_r2
    from torch.distributed.tensor import Partial, Replicate

    sums = torch.stack([s_r, s_r2], 1)
    layouts: dict[Any, list[int]] = {}
    for i, t in enumerate(like):
        if isinstance(t, dtensor) and any(p.is_shard() for p in t.placements):  # type: ignore[attr-defined]
            key = (t.device_mesh, tuple(t.placements))  # type: ignore[attr-defined]
            layouts.setdefault(key, []).append(i)
    for (mesh, placements), idx in layouts.items():
        sel = torch.tensor(idx, device=sums.device)
        reduce = [Partial() if p.is_shard() else Replicate() for p in placements]
        local = sums.index_select(0, sel)
        total = dtensor.from_local(local, mesh, reduce, run_check=False)  # type: ignore[attr-defined]
        sums = sums.index_copy(0, sel, total.full_tensor())
    return sums[:, 0], sums[:, 1]
