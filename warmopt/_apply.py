"""Stage 4, apply: the update at ``lr * s`` per tensor, by the first path of ``PATHS`` that applies.

Without a warm-up (``scale is None``) every group takes torch's own update, untouched. While
warming, each group's tensors take the first entry of the table whose *applies-when* holds:

======================  ====================================================================
``own foreach``         the algorithm's copy of torch's foreach step with a per-tensor step size
                        (Adam/AdamW without amsgrad or GradScaler tensors; RMSprop without
                        momentum); float ``lr``, not capturable/differentiable, no float16
``torch single``        torch's single-tensor update per tensor, the group's ``lr`` replaced by the
                        host float ``lr * s`` (single-tensor mode, scales readable on the host)
``fused each``          torch's fused kernel once per tensor at its own ``lr * s`` (Adam/AdamW in
                        fused mode, float ``lr``) for the large tensors (``FUSED_EACH_MIN``); the
                        rest go on down the table
``lerp``                torch's update at ``lr``, then ``p = lerp(p_new, p_old, 1 - s)``
======================  ====================================================================

The last one holds for every option: ``p_old + s (p_new - p_old)`` equals torch's update at
``s * lr`` because the moments do not depend on lr, decoupled weight decay ``p (1 - lr wd)`` is
linear in lr, and L2 weight decay, momentum buffers, ``amsgrad`` and ``maximize`` enter the step
only through terms that ``lr`` multiplies. ``s`` is a per-tensor 0-d device tensor, so it costs
no host sync and no recompile; ``p_old`` is a transient copy (per tensor in single-tensor mode,
per bucket otherwise), never a persistent buffer. The error is one rounding of ``p``:
``p_new - p_old`` is exact when the step is small (Sterbenz), so ``s * (p_new - p_old)`` keeps
full relative precision. The first three are torch's step at ``lr * s`` bit for bit on the CPU
(see their docstrings and docs/warmup.md, "Cost").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._algorithms import Algorithm, GroupBatch, own_foreach_ok, real_views
from ._device import split_to

__all__ = ["FUSED_EACH_MIN", "FUSED_EACH_MIN_HOST", "PATHS", "Path", "Target", "apply"]

#: Fused mode: tensors with at least this many elements are stepped by one fused call each at
#: their own ``lr * s`` (no copy, no lerp); smaller ones share one call and the snapshot + lerp, so
#: the kernel count does not grow with the number of small tensors. With the scales on a device a
#: kernel launch costs as much as moving ~0.5M elements, hence the high threshold there; on the
#: CPU a dispatch costs ~3 µs and the copy and lerp ~20 bytes per element, so a fused call per
#: tensor pays from a few thousand elements on (400 small tensors, half of them 10^4 elements:
#: 3.2 ms with a call per tensor against 5.6 ms with the copy and lerp; torch's own fused step
#: 2.1 ms).
FUSED_EACH_MIN = 1 << 16
FUSED_EACH_MIN_HOST = 4096
#: On the CPU the small tensors get their own fused calls too when there are at most this many,
#: or at most twice as many as large ones: the copy, the lerp and the shared call cost about as
#: much as a hundred dispatches (a 6-layer TransformerEncoder, 24 large and 48 small tensors:
#: 4.2 ms with a call per tensor, 5.1 ms with the copy and lerp for the small ones), while the
#: dispatches then grow with the number of large tensors only.
FUSED_EACH_FEW = 8


@dataclass
class Target:
    """One param group's share of the step: what every path reads."""

    algorithm: Algorithm
    group: dict[str, Any]
    batch: GroupBatch
    mode: str  # "single", "foreach" or "fused" (torch's path for this group)
    scale: Tensor  # one entry per tensor of batch
    step: Tensor  # step counts after this step's increment, same layout
    grad_scale: Tensor | None
    found_inf: Tensor | None
    host: bool  # scale and step may be read on the host (they live on the CPU)

    @property
    def float_lr(self) -> bool:
        return not isinstance(self.group["lr"], Tensor)


@dataclass(frozen=True)
class Path:
    """An entry of the table: the path ``kernel`` steps the target when ``applies`` holds."""

    name: str
    applies: Callable[[Target], bool]
    kernel: Callable[[Target], None]


def _own_foreach_applies(t: Target) -> bool:
    return own_foreach_ok(t.group, t.batch, t.mode) and t.algorithm.scaled_foreach_supports(
        t.group, t.grad_scale, t.found_inf
    )


def _own_foreach(t: Target) -> None:
    t.algorithm.scaled_foreach(t.group, t.batch, t.scale, t.step, t.host)


def _single_applies(t: Target) -> bool:
    """torch's single-tensor path (a loop over the tensors) with a float ``lr`` and the scales
    readable on the host (CPU), not capturable or differentiable (whose updates keep tensors and
    autograd history)."""
    return (
        t.mode == "single"
        and t.host
        and t.float_lr
        and not t.group.get("capturable", False)
        and not t.group.get("differentiable", False)
    )


def _single(t: Target) -> None:
    """torch's single-tensor update, one tensor at a time, each with the group's ``lr`` set to
    ``lr * s`` (a host float): torch's own step at that lr, bit for bit, for every option of
    Adam, AdamW and RMSprop, with no snapshot and no lerp. torch's single-tensor path is itself
    a Python loop over the tensors, so this adds no op per tensor."""
    lr = float(t.group["lr"])
    for i, s in enumerate(t.scale.tolist()):
        t.algorithm.update({**t.group, "lr": lr * s}, t.batch.subset(i), t.grad_scale, t.found_inf)


def _fused_each_indices(t: Target) -> list[int]:
    """The tensors ``fused each`` steps: those of at least ``FUSED_EACH_MIN`` elements
    (``FUSED_EACH_MIN_HOST`` with the scales on the CPU), and on the CPU all of them when at most
    ``FUSED_EACH_FEW``, or twice as many as the large ones, would be left over. Not complex
    ones (torch's fused kernel has none)."""
    params = t.batch.params
    real = [i for i, p in enumerate(params) if not (t.batch.has_complex and torch.is_complex(p))]
    least = FUSED_EACH_MIN_HOST if t.host else FUSED_EACH_MIN
    large = [i for i in real if params[i].numel() >= least]
    if t.host and len(params) - len(large) <= max(FUSED_EACH_FEW, 2 * len(large)):
        return real
    return large


def _fused_each_applies(t: Target) -> bool:
    return (
        t.mode == "fused"
        and t.algorithm.has_fused_each
        and t.float_lr
        and bool(_fused_each_indices(t))
    )


def _fused_each(t: Target) -> None:
    """One fused call per chosen tensor at its own ``lr * s``; the others go on down the table."""
    each = _fused_each_indices(t)
    n = len(t.batch.params)
    rest = sorted(set(range(n)) - set(each))
    scale = t.scale
    if rest:
        pick = torch.tensor(each + rest).to(scale.device, non_blocking=True)
        picked = scale[pick]
        scale_each, scale = picked[: len(each)], picked[len(each) :]
    else:
        scale_each = scale
    t.algorithm.fused_each(
        t.group, t.batch.select(each) if rest else t.batch, scale_each,
        t.grad_scale, t.found_inf, t.host,
    )  # fmt: skip
    if rest:
        step = t.step[torch.tensor(rest).to(t.step.device, non_blocking=True)]
        apply_target(
            Target(
                t.algorithm, t.group, t.batch.select(rest), t.mode, scale, step,
                t.grad_scale, t.found_inf, t.host,
            ),
            after=FUSED_EACH,
        )  # fmt: skip


def _lerp(t: Target) -> None:
    """torch's update at ``lr``, then each tensor moved back by ``1 - s`` of its step."""
    batch = t.batch
    keep = split_to((1.0 - t.scale).float(), batch.params)  # the fraction *not* taken
    if t.mode == "single":
        # torch's single-tensor path is a loop over tensors; running it one tensor at a time
        # gives the same numbers and keeps the transient copy to one tensor.
        for i, p in enumerate(batch.params):
            before = p.clone()
            t.algorithm.update(t.group, batch.subset(i), t.grad_scale, t.found_inf)
            real_views([p])[0].lerp_(real_views([before])[0], keep[i])
        return
    # The step runs under no_grad (or with autograd on, for differentiable=True, as torch's
    # does), so the parameters are updated in place without detach().
    params = batch.params
    old = list(torch._foreach_mul(params, 1.0))
    t.algorithm.update(t.group, batch, t.grad_scale, t.found_inf)
    # 0-d tensor weights broadcast, like capturable Adam's per-tensor step sizes
    torch._foreach_lerp_(
        real_views(params, batch.has_complex), real_views(old, batch.has_complex), keep
    )


OWN_FOREACH = Path("own foreach", _own_foreach_applies, _own_foreach)
TORCH_SINGLE = Path("torch single", _single_applies, _single)
FUSED_EACH = Path("fused each", _fused_each_applies, _fused_each)
LERP = Path("lerp", lambda t: True, _lerp)

#: The paths, in the order they are tried.
PATHS: tuple[Path, ...] = (OWN_FOREACH, TORCH_SINGLE, FUSED_EACH, LERP)


def apply_target(target: Target, after: Path | None = None) -> None:
    """Step ``target`` by the first path of ``PATHS`` (after ``after``, if given) that applies."""
    paths = PATHS[PATHS.index(after) + 1 :] if after is not None else PATHS
    for path in paths:
        if path.applies(target):
            path.kernel(target)
            return


def apply(
    algorithm: Algorithm,
    groups: list[dict[str, Any]],
    batches: list[GroupBatch],
    modes: list[str],
    scale: Tensor | None,
    step: Tensor | None,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    cpu_is_host: bool = True,
) -> None:
    """Step every group: torch's own update where ``scale`` is ``None`` (no warm-up, or warm-up
    over), else each group's tensors at ``lr * s`` (``scale``/``step`` hold the tensors of all
    groups, in order, on one device). ``cpu_is_host=False`` (``WARMOPT_DEVICE_PATH_ON_CPU``)
    takes the accelerator paths for CPU scales too."""
    host = scale is not None and cpu_is_host and scale.device.type == "cpu"
    start = 0
    for group, batch, mode in zip(groups, batches, modes):
        n = len(batch.params)
        if n == 0:
            continue
        if scale is None or step is None:
            algorithm.update(group, batch, grad_scale, found_inf)
            continue
        target = Target(
            algorithm, group, batch, mode, scale[start : start + n], step[start : start + n],
            grad_scale, found_inf, host,
        )  # fmt: skip
        start += n
        apply_target(target)
