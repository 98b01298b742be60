"""Watching the warm-up: device-tensor summaries for any logger, and a TensorBoard helper.

:func:`warmup_summary` reads the per-tensor warm-up numbers that a warmopt optimizer keeps in
``optimizer.state[p]`` (``warmup_scale``, and those the policy lists in ``spec.summary``: for
:class:`warmopt.Measured` ``warmup_update_ratio``, plus ``warmup_kurtosis`` and ``warmup_drift``
when its confidence or drift options are on) and reduces them, per param
group and over the whole optimizer, to 0-d float32 tensors on the parameters' device, without a
host sync: call it every step and hand the tensors to a logger that syncs when it flushes.
:func:`log_warmup` writes the same numbers with ``writer.add_scalar``
(``torch.utils.tensorboard.SummaryWriter`` or anything with that method); it reads them on the
host, with one device-to-host copy for all the scalars.

The summaries cover only the tensors that have stepped at least once; a group without any has
NaN entries (0/0), not zeros.

One set of names everywhere: :func:`warmup_summary` keys its tensors ``scale_median``,
``fraction_warmed``, ... over the whole optimizer and ``group{i}/scale_median``,
``group{i}/lr_effective``, ... per param group; :meth:`warmopt.WarmupOptimizer.warmup_stats`
returns the same keys with plain floats; :func:`log_warmup` writes each under
``f"{prefix}/{key}"`` (``warmup/scale_median``, ``warmup/group0/lr_effective``) and returns the
values it wrote keyed by those same tags.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["ScalarWriter", "log_warmup", "warmup_summary"]

_PREFIX = "warmup_"

#: Numbers whose 0 means "not measured": the relative step of a tensor that follows the matrices
#: (a vector, a tensor at zero). Their medians are over the tensors with a positive value (NaN
#: where there is none), else a model with as many biases as weight matrices would report 0.
_MEASURED_ONLY = frozenset({"update_ratio"})


class ScalarWriter(Protocol):
    """Anything with ``add_scalar(tag, value, step)``, e.g. a ``SummaryWriter``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int, /) -> object: ...


def _stack(tensors: list[Tensor], device: torch.device) -> Tensor:
    """One float32 vector on ``device`` from 0-d tensors (one copy per extra device, if any)."""
    if len({t.device for t in tensors}) > 1:
        tensors = [t.to(device, non_blocking=True) for t in tensors]
    return torch.stack(tensors).to(device=device, dtype=torch.float32, non_blocking=True)


def _collect(optimizer: Optimizer) -> tuple[Tensor, list[str], list[int], torch.device]:
    """The per-tensor numbers of every stepped tensor, in group order.

    Returns ``(values, rows, counts, device)``: ``values`` has one row per name in ``rows``
    (``scale`` first) and one column per stepped tensor; ``counts[i]`` is the number of columns
    of group ``i``. Without a warm-up policy (``warmup=None`` or a plain torch optimizer) every
    parameter counts, at scale 1.
    """
    groups = optimizer.param_groups
    params = [p for g in groups for p in g["params"]]
    device = params[0].device if params else torch.device("cpu")
    policy = getattr(optimizer, "warmup", None)
    if policy is None:
        counts = [len(g["params"]) for g in groups]
        return torch.ones(1, sum(counts), device=device), ["scale"], counts, device
    # the policy declares which of its numbers are summarised besides the scale
    rows = ["scale", *policy.spec.summary]
    keys = [_PREFIX + name for name in rows]
    counts = []
    columns: list[dict[Any, Tensor]] = []
    for group in groups:
        states = [optimizer.state.get(p, {}) for p in group["params"]]
        stepped = [st for st in states if all(k in st for k in keys)]
        counts.append(len(stepped))
        columns.extend(stepped)
    if not columns:
        return torch.zeros(len(keys), 0, device=device), rows, counts, device
    flat = [st[k] for k in keys for st in columns]  # row-major: all scales, then all kurtoses...
    return _stack(flat, device).view(len(keys), len(columns)), rows, counts, device


def _group_lrs(optimizer: Optimizer, device: torch.device) -> Tensor:
    """Each group's ``lr`` (a float or a tensor) as one float32 vector on ``device``."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    if not any(isinstance(lr, Tensor) for lr in lrs):
        return torch.tensor(lrs, dtype=torch.float32).to(device, non_blocking=True)
    parts = [torch.as_tensor(lr).reshape(()).to(device, torch.float32) for lr in lrs]
    return torch.stack(parts)


def warmup_summary(optimizer: Optimizer) -> dict[str, Tensor]:
    """Min/median/max of the warm-up scale, fraction warmed, effective LR: device tensors, no sync.

    Keys (each value a 0-d float32 tensor on the device of the first parameter):

    * over all param groups: ``scale_min``, ``scale_median``, ``scale_max`` (of the per-tensor
      scales), ``fraction_warmed`` (share of tensors at scale 1), and, for
      :class:`warmopt.Measured`, ``update_ratio`` (the median relative step ``||lr * d|| / ||p||``
      at full lr, over the tensors that measure it: a vector or a tensor at zero follows the
      matrices and is left out; NaN where no tensor measures it) and, with its ``confidence`` or
      ``drift`` option, ``kurtosis`` and ``drift`` (medians of the per-tensor estimates ``K`` of
      kappa - 1 and ``D``, see the policy's docstring);
    * per group ``i``: the same under ``group{i}/``, plus ``group{i}/lr_effective`` =
      ``param_groups[i]['lr']`` times the group's median scale (the learning rate its median
      tensor steps with; ``lr`` may be a float or a tensor).

    Only tensors that have stepped at least once are summarised (a parameter without a gradient
    yet has no warm-up state); where a group has none -- before the first step, for instance --
    its entries are NaN. The median is the lower median, as :func:`torch.median`. With
    ``warmup=None`` (or a plain torch optimizer) every scale is 1. The work is a fixed number of
    ops on one stacked matrix, whatever the number of tensors, and nothing is read on the host.

    Example:
        >>> import torch, warmopt
        >>> from warmopt.monitor import warmup_summary
        >>> w = torch.nn.Parameter(torch.full((3, 4), 0.01))  # a weight matrix
        >>> b = torch.nn.Parameter(torch.zeros(3))  # a bias: it follows the matrix
        >>> opt = warmopt.AdamW([w, b], lr=1e-3)
        >>> warmup_summary(opt)["scale_median"]  # nothing has stepped yet
        tensor(nan)
        >>> w.grad, b.grad = torch.ones(3, 4), torch.ones(3)
        >>> opt.step()
        >>> summary = warmup_summary(opt)
        >>> round(float(summary["update_ratio"]), 3)  # at full lr the step would move w by 10 %
        0.1
        >>> round(float(summary["scale_median"]), 3), float(summary["fraction_warmed"])
        (0.2, 0.0)
        >>> round(float(summary["group0/lr_effective"]), 7)
        0.0002
    """
    values, rows, counts, device = _collect(optimizer)
    n_rows, total = values.shape
    nan = torch.full((n_rows,), math.nan, device=device)
    out: dict[str, Tensor] = {}

    # Over all groups: one sort per row; the positions are known on the host.
    by_value, order = values.sort(dim=1, stable=True)
    warmed = (values[0] >= 1.0).float()
    if total:
        ends = torch.tensor([0, (total - 1) // 2, total - 1], device=device)
        low, mid, high = by_value.index_select(1, ends).unbind(1)
        frac = warmed.mean()
    else:
        low = mid = high = nan
        frac = nan[0]
    out.update(scale_min=low[0], scale_median=mid[0], scale_max=high[0], fraction_warmed=frac)
    measured = [i for i, name in enumerate(rows) if name in _MEASURED_ONLY]
    for i in measured:  # the lower median of the positive entries, which sort last
        if total:
            k = (values[i] > 0).sum()
            pos = (total - k + torch.div(k - 1, 2, rounding_mode="floor")).clamp(0, total - 1)
            mid = mid.clone()
            mid[i] = torch.where(k > 0, by_value[i].gather(0, pos.reshape(1))[0], math.nan)
    for i, name in enumerate(rows[1:], start=1):
        out[name] = mid[i]

    # Per group: a stable sort by group index of the value-sorted columns leaves every group's
    # columns contiguous and ascending; empty groups read column 0 and are masked to NaN.
    n_groups = len(counts)
    group_of = torch.tensor(
        [i for i, n in enumerate(counts) for _ in range(n)], dtype=torch.long, device=device
    )
    count = torch.tensor(counts, dtype=torch.float32).to(device, non_blocking=True)
    empty = count == 0
    if total:
        by_group = by_value.gather(1, group_of[order].sort(dim=1, stable=True).indices)
        starts = [sum(counts[:i]) for i in range(n_groups)]
        pos = [
            [s if n else 0 for s, n in zip(starts, counts)],
            [s + (n - 1) // 2 if n else 0 for s, n in zip(starts, counts)],
            [s + n - 1 if n else 0 for s, n in zip(starts, counts)],
        ]
        picked = by_group.index_select(1, torch.tensor(pos, device=device).flatten())
        picked = torch.where(empty, math.nan, picked.view(n_rows, 3, n_groups))
    else:
        picked = torch.full((n_rows, 3, n_groups), math.nan, device=device)
    g_low, g_mid, g_high = picked.unbind(1)
    if measured and total:
        g_mid = g_mid.clone()
        start = torch.tensor(starts, device=device)
        for i in measured:
            positive = (values[i] > 0).float()
            k = torch.zeros(n_groups, device=device).index_add_(0, group_of, positive)
            pos = start + (count - k) + torch.div(k - 1, 2, rounding_mode="floor")
            got = by_group[i].gather(0, pos.long().clamp(0, total - 1))
            g_mid[i] = torch.where(k > 0, got, math.nan)
    g_frac = torch.zeros(n_groups, device=device).index_add_(0, group_of, warmed) / count
    g_lr = _group_lrs(optimizer, device) * g_mid[0]
    per_group = {
        "scale_min": g_low[0],
        "scale_median": g_mid[0],
        "scale_max": g_high[0],
        "fraction_warmed": g_frac,
        "lr_effective": g_lr,
        **{name: g_mid[i] for i, name in enumerate(rows[1:], start=1)},
    }
    columns = {name: vector.unbind(0) for name, vector in per_group.items()}
    for i in range(n_groups):
        out.update({f"group{i}/{name}": column[i] for name, column in columns.items()})
    return out


def log_warmup(
    writer: ScalarWriter,
    optimizer: Optimizer,
    step: int,
    prefix: str = "warmup",
    *,
    histogram: bool = False,
) -> dict[str, float]:
    """Write :func:`warmup_summary` with ``writer.add_scalar(f"{prefix}/{key}", value, step)``.

    **Syncs with the device**: the summary is copied to the host once (one transfer for all
    values) to hand plain floats to the writer. NaN entries (groups that have not stepped yet)
    are not written. With ``histogram=True`` it also writes the per-tensor scales of the stepped
    tensors with ``writer.add_histogram(f"{prefix}/scale", ...)`` (a second transfer; the writer
    must have that method, as :class:`torch.utils.tensorboard.SummaryWriter` does). With
    ``prefix=""`` the tags are the summary's keys themselves.

    Returns:
        The scalars written, keyed by the tags they were written under
        (``{"warmup/scale_median": 0.2, "warmup/group0/lr_effective": ...}``).

    Example:
        >>> import torch, warmopt
        >>> from warmopt.monitor import log_warmup
        >>> class PrintWriter:
        ...     def add_scalar(self, tag, value, step):
        ...         if tag.endswith("median"):
        ...             print(tag, round(value, 3), step)
        >>> w = torch.nn.Parameter(torch.full((3, 4), 0.01))
        >>> opt = warmopt.Adam([w], lr=1e-3)
        >>> w.grad = torch.ones(3, 4); opt.step()
        >>> written = log_warmup(PrintWriter(), opt, step=1)
        warmup/scale_median 0.2 1
        warmup/group0/scale_median 0.2 1
        >>> round(written["warmup/group0/lr_effective"], 7)
        0.0002
    """
    summary = warmup_summary(optimizer)
    keys = list(summary)
    numbers = torch.stack(list(summary.values())).cpu().tolist()  # the one host sync
    written: dict[str, float] = {}
    add_histogram = getattr(writer, "add_histogram", None)
    if histogram and add_histogram is None:
        raise TypeError(f"histogram=True needs writer.add_histogram; {type(writer)} has none")

    def tag(key: str) -> str:
        return f"{prefix}/{key}" if prefix else key

    for key, number in zip(keys, numbers):
        if not math.isnan(number):
            writer.add_scalar(tag(key), number, step)
            written[tag(key)] = number
    if histogram:
        scales = _collect(optimizer)[0][0]
        if scales.numel():
            add_histogram(tag("scale"), scales.cpu(), step)  # type: ignore[misc]
    return written
