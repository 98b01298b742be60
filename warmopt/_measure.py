"""Stage 2, measure: the fresh-ratio statistics of every tensor, tensors in, ``Statistics`` out.

Pure: it reads gradients, second moments (before this step's update) and, for coupled weight
decay, parameters; it writes nothing. All tensors of a device go through **one flat pass**:

1. every tensor contributes its measured coordinates -- a window of ``sample`` coordinates
   chosen by its step count (a view: the start is known on the host), or the whole tensor when
   it is not longer than that (or an FSDP2 shard) -- zero-padded to whole rows of
   ``_stats.BLOCK``;
2. one ``torch.cat`` each gathers them into a ``[rows, BLOCK]`` matrix for ``g`` and one for
   ``v`` (and ``p`` with coupled decay);
3. the ratio passes run once over those matrices and end in row sums
   (``_stats.fresh_ratio_row_sums``);
4. one ``index_add_`` over a cached row-to-tensor index turns row sums into per-tensor sums
   (``_stats.segment_sums``); FSDP2 shard sums are all-reduced.

So the kernels of a warming step do not depend on the number or the shapes of the tensors, on
any device (views are not kernels). What may split a pass: several devices, param groups with
different coupled weight decay, and more than ``FLAT_MAX_NUMEL`` measured coordinates (only
with ``sample=None``), which bounds the transient buffers.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import _stats
from ._algorithms import Algorithm, GroupBatch, real_views
from ._collect import Warming
from ._device import dtensor_type
from ._stats import Statistics
from .policies import MeasurementSpec

__all__ = [
    "FLAT_MAX_NUMEL", "GRAD_AVG_DECAY", "KEEP_BYTES", "KEEP_FRACTION", "Layouts", "measure",
    "measure_update", "staggered",
]  # fmt: skip

#: Decay of the running average of the gradients kept where the algorithm keeps none (RMSprop
#: without momentum): Adam's default beta1.
GRAD_AVG_DECAY = 0.9

#: A pass keeps its work buffers from step to step (fresh multi-MB buffers on every step cost
#: page faults on the CPU: a 3.5 MB ``torch.cat`` takes ~3 ms into a new buffer and ~0.6 ms into
#: a kept one) while they hold at most this fraction of the elements of the tensors it
#: measures, or at most ``KEEP_BYTES`` in all: no buffer that grows with the parameters is kept
#: (for large models of many tensors measured whole the buffers are made on every step).
KEEP_FRACTION = 0.25
KEEP_BYTES = 16 << 20

#: At most this many coordinates (padded) go through one flat pass: bounds its buffers (g and v,
#: 4 bytes each per coordinate; p too with coupled decay) when every coordinate is measured
#: (``sample=None``).
FLAT_MAX_NUMEL = 1 << 22


def staggered(numbers: list[int], every: int, calls: int) -> list[bool] | None:
    """Which tensors to measure on warming call number ``calls`` (from 0) under
    ``measure_every=every``: tensor number ``j`` (``numbers``: each tensor's position in
    ``param_groups`` order) on calls ``j + 1, j + 1 + every, ...`` (call 0 is step 1, which has
    nothing to measure against). ``None``: all of them."""
    if every <= 1:
        return None
    return [(calls - 1 - j) % every == 0 for j in numbers]


@dataclass
class _Pass:
    """The cached layout of one flat pass."""

    lengths: list[int]  # of each tensor's measured coordinates
    pads: list[Tensor | None]  # zero padding after each tensor's coordinates (shared views)
    rows: Tensor  # int64 [blocks] on the pass's device: the tensor (0..k-1) of every row
    where: Tensor | None  # int64 [k] on home: each tensor's position in the step (None: 0..n-1)
    #: the pass's buffers for g, v (and p), [blocks, BLOCK] each, kept from step to step where
    #: they are small against the parameters they measure (``KEEP_FRACTION``): fresh
    #: multi-MB buffers on every step cost page faults on the CPU. Dropped with the layouts when
    #: the warm-up ends. Empty: allocated on every step.
    work: list[Tensor]
    #: the running gradient average laid out like this pass, ``(matrix, views)``, where the
    #: measure stage keeps one (:meth:`Layouts.grad_average`; kept on the layout, not in a table
    #: keyed by ``id(layout)``, which torch.compile cannot trace)
    averaged: tuple[Tensor, list[Tensor]] | None = None
    #: the relative-step pass's windows of persistent tensors (parameters, optimizer state) by
    #: name: ``(tensors, data_ptrs, windows)``, reused while the same tensors hold the same
    #: storage (building ~400 views costs about a millisecond per list on the CPU). Never
    #: gradients: caching them would keep last step's gradients alive.
    windows: dict[str, tuple[list[Tensor], list[int], list[Tensor]]] = field(default_factory=dict)


class Layouts:
    """Layouts of the flat passes, cached by the tensors' positions and segment lengths (the set
    of tensors with a gradient rarely changes; ``measure_every`` cycles through ``k`` sets)."""

    def __init__(self, size: int = 64) -> None:
        self._passes: OrderedDict[Any, _Pass] = OrderedDict()
        self.tensors: dict[Any, _Tensors] = {}
        self._vectors: OrderedDict[Any, Tensor] = OrderedDict()
        self._zeros: dict[torch.device, Tensor] = {}
        self._size = size

    def clear(self) -> None:
        """Drop every layout and its buffers (the warm-up is over)."""
        self._passes.clear()
        self._vectors.clear()
        self.tensors.clear()

    def __bool__(self) -> bool:
        return bool(self._passes or self._vectors)

    def kept_bytes(self) -> int:
        """Bytes of the work buffers the passes keep from step to step (until the warm-up
        ends)."""
        return sum(t.numel() * t.element_size() for laid in self._passes.values()
                   for t in laid.work)  # fmt: skip

    def _remember(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> Any:
        table[key] = value
        if len(table) > self._size:
            table.popitem(last=False)
        return value

    def known(self, plan: list[Any], home: torch.device, n: int) -> bool:
        """Whether the passes of ``plan`` (from ``_plan``) are laid out already."""
        return all(
            (device, home, tuple(indices), n, dtype, 2 + (decay != 0.0)) in self._passes
            for device, decay, dtype, indices in plan
        )

    def flat_pass(
        self, device: torch.device, home: torch.device, picked: list[int], lengths: list[int],
        n: int, dtype: torch.dtype, buffers: int, whole: int = 0,
    ) -> _Pass:  # fmt: skip
        """The layout of the pass over tensors ``picked`` (positions in the step, of ``n``)
        measuring ``lengths`` coordinates each, with ``buffers`` work buffers of ``dtype``, kept
        by the rule of :meth:`_build`."""
        key = (device, home, tuple(picked), n, dtype, buffers)
        if key in self._passes and self._passes[key].lengths != lengths:
            del self._passes[key]  # the same tensors with other lengths (a new set of tensors)
        return self._build(key, device, home, picked, lengths, n, dtype, buffers, whole)

    def update_pass(
        self, device: torch.device, home: torch.device, picked: list[int], lengths: list[int],
        n: int, dtype: torch.dtype, buffers: int, whole: int,
    ) -> _Pass:  # fmt: skip
        """The layout (rows, pads, positions) of a pass of the relative-step measurement, with
        ``buffers`` work buffers of ``dtype``, kept by the rule of :meth:`_build`."""
        key = ("update", device, home, tuple(picked), tuple(lengths), n, dtype, buffers)
        return self._build(key, device, home, picked, lengths, n, dtype, buffers, whole)

    def _build(
        self, key: Any, device: torch.device, home: torch.device, picked: list[int],
        lengths: list[int], n: int, dtype: torch.dtype, buffers: int, whole: int,
    ) -> _Pass:  # fmt: skip
        """The cached pass under ``key``, or a new one laid out and remembered. Its ``buffers``
        work buffers are kept if they hold at most ``KEEP_FRACTION`` of the ``whole`` elements
        the pass measures, or at most ``KEEP_BYTES``; otherwise they are made on every step."""
        got = self._cached(key)
        if got is not None:
            return got
        laid = self._lay_out(device, home, picked, lengths, n)
        shape = (laid.rows.numel(), _stats.BLOCK)
        numel = buffers * shape[0] * shape[1]
        if buffers and (numel <= KEEP_FRACTION * whole or numel * dtype.itemsize <= KEEP_BYTES):
            laid.work = [torch.empty(shape, dtype=dtype, device=device) for _ in range(buffers)]
        return self._remember(self._passes, key, laid)  # type: ignore[no-any-return]

    def _cached(self, key: Any) -> _Pass | None:
        got = self._passes.get(key)
        if got is not None:
            self._passes.move_to_end(key)
        return got

    def _lay_out(
        self, device: torch.device, home: torch.device, picked: list[int], lengths: list[int],
        n: int,
    ) -> _Pass:  # fmt: skip
        """Pads, rows and positions of a pass over ``picked`` measuring ``lengths`` coordinates
        each (no work buffers)."""
        zeros = self._zeros.get(device)
        if zeros is None:
            zeros = self._zeros[device] = torch.zeros(_stats.BLOCK, device=device)
        pads = [zeros[: -k % _stats.BLOCK] if k % _stats.BLOCK else None for k in lengths]
        rows = torch.tensor(
            [i for i, k in enumerate(lengths) for _ in range(-(-k // _stats.BLOCK))],
            dtype=torch.long,
        ).to(device)
        where = None if picked == list(range(n)) else torch.tensor(picked, dtype=torch.long)
        return _Pass(list(lengths), pads, rows, None if where is None else where.to(home), [])

    def grad_average(
        self, state: dict[Any, dict[str, Any]], params: list[Tensor], layout: _Pass,
        dtype: torch.dtype,
    ) -> Tensor:  # fmt: skip
        """The running gradient average of ``params`` (``state[p]["warmup_grad_avg"]``, their
        first coordinates) as one ``[rows, BLOCK]`` matrix laid out like ``layout``, whose
        pieces *are* the state entries (views): updating it in place updates them. Laid out
        again, from the entries' values, when they are not those views (first use, a loaded
        checkpoint, another set of tensors); an entry that is missing or of another size starts
        at zero."""
        got = layout.averaged
        entries = [state[p].get("warmup_grad_avg") for p in params]
        if got is not None:
            flat, views = got
            if all(map(operator.is_, views, entries)):
                return flat
        flat = torch.zeros(layout.rows.numel(), _stats.BLOCK, dtype=dtype,
                           device=layout.rows.device)  # fmt: skip
        views, start = [], 0
        with torch.no_grad():
            for p, entry, k in zip(params, entries, layout.lengths):
                view = flat.view(-1)[start : start + k]
                if isinstance(entry, Tensor) and entry.numel() == k:
                    view.copy_(entry.reshape(-1))
                state[p]["warmup_grad_avg"] = view
                views.append(view)
                start += -(-k // _stats.BLOCK) * _stats.BLOCK
        layout.averaged = (flat, views)
        return flat

    def vector(self, key: Any, values: list[float], home: torch.device) -> Tensor:
        """A float32 vector of host ``values`` on ``home``, made once per ``key``."""
        got = self._vectors.get(key)
        if got is None:
            got = torch.tensor(values, dtype=torch.float32).to(home, non_blocking=True)
            self._remember(self._vectors, key, got)
        else:
            self._vectors.move_to_end(key)
        return got


@dataclass
class _Tensors:
    """What the measure stage knows about one set of tensors with a gradient, kept while the set
    stays the same: per tensor, its device, its group's coupled decay, the dtype its pass
    computes in, the coordinates it measures (``length``), whether that is a window (else the
    whole tensor or, for a DTensor, this rank's shard) and its real size; the count vector."""

    slots: list[tuple[torch.device, float, torch.dtype, int]]
    window: list[bool]
    numel: list[int]
    count: Tensor
    measurable: Tensor  # 1.0 where count > 0 (float32)
    plans: dict[Any, list[tuple[torch.device, float, torch.dtype, list[int]]]]


def measure(
    batches: list[GroupBatch],
    decays: list[float],
    warming: Warming,
    spec: MeasurementSpec,
    numbers: list[int],
    calls: int,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    layouts: Layouts,
) -> Statistics:
    """Fresh-ratio sums for every tensor of ``warming``, in its order.

    ``decays`` holds each group's coupled decay (``Algorithm.coupled_decay``). With
    ``spec.sample``, each plain tensor longer than that is measured on a window of ``sample``
    coordinates chosen by its step count (``_stats.window_start``); DTensor shards are measured
    whole. With ``spec.every > 1`` only the tensors :func:`staggered` picks for warming call
    ``calls`` are measured (``numbers``: their positions in ``param_groups``); the others get
    zero sums and ``valid = 0``.
    """
    home, step, beta = warming.home, warming.step, warming.beta
    n = len(step)
    size, every = spec.sample, spec.every
    pick = staggered(numbers, every, calls)
    dtensor = dtensor_type()
    grads = [g for b in batches for g in real_views(b.grads, b.has_complex)]
    sqs = [v for b in batches for v in real_views(b.second_moments, b.has_complex)]
    ps: list[Tensor | None] = [
        p if decay != 0.0 else None
        for b, decay in zip(batches, decays)
        for p in real_views(b.params, b.has_complex)
    ]
    shards: list[Tensor | None] = []
    if dtensor is not None and any(isinstance(g, dtensor) for g in grads):
        # FSDP2: each rank measures its shard of a DTensor, whole
        shards = [g if isinstance(g, dtensor) else None for g in grads]
        grads = [g.to_local() if isinstance(g, dtensor) else g for g in grads]  # type: ignore[attr-defined]
        sqs = [v.to_local() if isinstance(v, dtensor) else v for v in sqs]  # type: ignore[attr-defined]
        ps = [p.to_local() if isinstance(p, dtensor) else p for p in ps]  # type: ignore[union-attr]
    known = _known(layouts, warming.params, grads, shards, decays, batches, size, home)

    plan = known.plans.get(pick and tuple(pick))
    if plan is None:
        # the first call of a stagger pattern: lay out all ``every`` patterns now, so that every
        # warming call dispatches the same ops
        for calls_ in range(every):
            pick_ = staggered(numbers, every, calls_)
            plan_ = known.plans[pick_ and tuple(pick_)] = _plan(known.slots, pick_)
            if pick_ is not None:
                layouts.vector(("pick", tuple(pick_)), [float(x) for x in pick_], home)
            for device, decay, dtype, indices in plan_:
                lengths = [known.slots[i][3] for i in indices]
                whole = sum(known.numel[i] for i in indices)
                layouts.flat_pass(
                    device, home, indices, lengths, n, dtype, 2 + (decay != 0.0), whole
                )
        plan = known.plans[pick and tuple(pick)]

    host_steps = warming.host_steps
    # b = 1 - beta^(t-1), and the cap 1/(w b) of the ratio in units of b, w = (1-beta)/(1-beta^t)
    prev_bc = 1 - beta ** (step - 1)
    cap = (1 - beta**step) / ((1 - beta) * prev_bc)
    inv_gs2 = None
    if grad_scale is not None:
        inv_gs2 = grad_scale.to(torch.float32).reciprocal().square()
    sums: dict[str, Tensor] | None = None
    for device, decay, dtype, indices in plan:
        lengths = [known.slots[i][3] for i in indices]
        whole = sum(known.numel[i] for i in indices)
        layout = layouts.flat_pass(
            device, home, indices, lengths, n, dtype, 2 + (decay != 0.0), whole
        )
        pieces: list[list[Tensor]] = [[], [], []] if decay != 0.0 else [[], []]
        for i in indices:
            if known.window[i]:
                assert size is not None and host_steps is not None
                start = _stats.window_start(host_steps[i], known.numel[i], size, every)
                for ts, t in zip(pieces, (grads[i], sqs[i], ps[i])):
                    ts.append(_window(t, start, size))  # type: ignore[arg-type]
            else:
                for ts, t in zip(pieces, (grads[i], sqs[i], ps[i])):
                    ts.append(t if t.dim() == 1 else t.reshape(-1))  # type: ignore[union-attr, arg-type]
        got = _flat_pass(pieces, layout, device, decay, n, home, cap, inv_gs2)
        sums = got if sums is None else {k: sums[k] + got[k] for k in sums}
    if sums is None:
        zero = torch.zeros(n, dtype=torch.float64, device=home)
        sums = dict.fromkeys(_stats.SUM_POWERS, zero)
    if shards:  # the same tensors on every rank, whatever was picked
        sums = _sum_over_shards(sums, shards)
    for name, power in _stats.SUM_POWERS.items():
        sums[name] = sums[name] * (prev_bc if power == 1 else prev_bc**power)

    count = known.count
    valid = (step >= 2) * known.measurable
    if pick is not None:
        valid = valid * layouts.vector(("pick", tuple(pick)), [float(x) for x in pick], home)
    if found_inf is not None:
        valid = valid * (found_inf.to(home, torch.float32) == 0).float()
    return Statistics(**sums, count=count, valid=valid)


def _known(
    layouts: Layouts,
    params: list[Tensor],
    grads: list[Tensor],
    shards: list[Tensor | None],
    decays: list[float],
    batches: list[GroupBatch],
    size: int | None,
    home: torch.device,
) -> _Tensors:
    """The :class:`_Tensors` of this set of tensors (made on the first step that sees it)."""
    key = (tuple(map(id, params)), tuple(decays), size, home, bool(shards))
    got = layouts.tensors.get(key)
    if got is not None and not shards:
        return got
    group_decay = [decay for b, decay in zip(batches, decays) for _ in b.params]
    slots, window, numel = [], [], []
    counts = []
    for i, g in enumerate(grads):
        whole = shards[i].numel() if shards and shards[i] is not None else g.numel()  # type: ignore[union-attr]
        cut = size is not None and whole > size and not (shards and shards[i] is not None)
        dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
        slots.append((g.device, group_decay[i], dtype, size if cut else g.numel()))
        window.append(cut)
        numel.append(whole)
        counts.append(float(size if cut else whole))  # type: ignore[arg-type]
    count = torch.tensor(counts, dtype=torch.float32).to(home, non_blocking=True)
    known = _Tensors(slots, window, numel, count, (count > 0).float(), {})  # type: ignore[arg-type]
    layouts.tensors[key] = known
    if len(layouts.tensors) > 4:
        layouts.tensors.pop(next(iter(layouts.tensors)))
    return known


def _plan(
    slots: list[tuple[torch.device, float, torch.dtype, int]], pick: list[bool] | None
) -> list[tuple[torch.device, float, torch.dtype, list[int]]]:
    """The flat passes: the picked tensors by device, coupled decay and dtype, in order, in runs
    of at most ``FLAT_MAX_NUMEL`` padded coordinates (a larger tensor alone)."""
    parts: dict[tuple[torch.device, float, torch.dtype], list[int]] = {}
    for i, (device, decay, dtype, _) in enumerate(slots):
        if pick is None or pick[i]:
            parts.setdefault((device, decay, dtype), []).append(i)
    plan = []
    for (device, decay, dtype), indices in parts.items():
        run: list[int] = []
        total = 0
        for i in indices:
            k = -(-slots[i][3] // _stats.BLOCK) * _stats.BLOCK
            if run and total + k > FLAT_MAX_NUMEL:
                plan.append((device, decay, dtype, run))
                run, total = [], 0
            run.append(i)
            total += k
        plan.append((device, decay, dtype, run))
    return plan


def _flat_pass(
    pieces: list[list[Tensor]],
    layout: _Pass,
    device: torch.device,
    decay: float,
    n: int,
    home: torch.device,
    cap: Tensor,
    inv_gs2: Tensor | None,
) -> dict[str, Tensor]:
    """One flat pass over the 1-D ``pieces`` of ``g``, ``v`` (and ``p`` with coupled decay) of
    the pass's tensors (one device, one coupled decay): per-tensor sums in units of ``b``
    (before the factor ``b ** power``), float32 vectors of length ``n`` on ``home`` (zero for
    the tensors not in the pass)."""
    work: list[Tensor | None] = [*layout.work] or [None] * len(pieces)
    g, v, *p = (_stats.pack_blocks(ts, layout.pads, out=buf) for ts, buf in zip(pieces, work))
    dtype = g.dtype
    if layout.where is not None:
        cap = cap[layout.where]
    cap = cap.to(device, dtype, non_blocking=True)[layout.rows].unsqueeze(1)
    gs = None if inv_gs2 is None else inv_gs2.to(device, non_blocking=True)
    row_sums = _stats.fresh_ratio_row_sums(g, v, cap, gs, p[0] if p else None, decay)
    sums = _stats.segment_sums(row_sums, layout.rows, len(layout.lengths))
    if layout.where is None and device == home:
        return sums
    out = {}
    for name, s in sums.items():
        s = s.to(home, non_blocking=True)
        out[name] = s if layout.where is None else s.new_zeros(n).index_copy_(0, layout.where, s)
    return out


def _window(t: Tensor, start: int, size: int) -> Tensor:
    """Coordinates ``[start, start + size)`` of flattened ``t``: a view (a copy of ``t`` first if
    it is not contiguous, as ``reshape`` makes)."""
    if t.is_contiguous():  # one view op instead of a reshape and a slice
        return t.as_strided((size,), (1,), t.storage_offset() + start)
    return t.reshape(-1)[start : start + size]


def _first(t: Tensor, k: int) -> Tensor:
    """The first ``k`` coordinates of flattened ``t`` (``t`` itself when it is 1-D and has ``k``:
    no op for a vector measured whole; a copy of ``t`` first if it is not contiguous, as
    ``reshape`` makes)."""
    if t.dim() == 1 and t.numel() == k:
        return t
    if torch.compiler.is_compiling():
        return t.reshape(-1)[:k]
    return _window(t, 0, k)


def _windows(layout: _Pass, name: str | None, ts: list[Tensor], lengths: list[int]) -> list[Tensor]:
    """The first ``lengths`` coordinates of each of ``ts`` (:func:`_first`), reused from
    ``layout.windows[name]`` while ``ts`` are the same tensors on the same storage and all
    contiguous (the windows are then views). ``name=None``: never cached (gradients)."""
    if name is None or torch.compiler.is_compiling():
        return [_first(t, k) for t, k in zip(ts, lengths)]
    got = layout.windows.get(name)
    ptrs = [t.data_ptr() for t in ts]
    if got is not None and all(map(operator.is_, got[0], ts)) and got[1] == ptrs:
        return got[2]
    windows = [_first(t, k) for t, k in zip(ts, lengths)]
    if all(t.is_contiguous() for t in ts):
        layout.windows[name] = (list(ts), ptrs, windows)
    return windows


def _flat(t: Tensor) -> Tensor:
    """``t`` as a 1-D tensor (itself if it already is one)."""
    return t if t.dim() == 1 else t.reshape(-1)


def _sum_over_shards(sums: dict[str, Tensor], like: list[Tensor | None]) -> dict[str, Tensor]:
    """Sums over this rank's shards of ``like`` -> sums over the whole tensors, on every rank.

    FSDP2 (DTensor) parameters are sharded across ranks: without this all-reduce each rank would
    measure only its shard and step its part of a tensor with its own scale (and the DTensor sums
    would not mix with the plain tensors of the policy). One all-reduce per distinct layout.
    """
    from torch.distributed.tensor import Partial, Replicate

    names = list(sums)
    stacked = torch.stack([sums[k] for k in names], 1)
    layouts: dict[Any, list[int]] = {}
    for i, t in enumerate(like):
        if t is not None and any(p.is_shard() for p in t.placements):  # type: ignore[attr-defined]
            key = (t.device_mesh, tuple(t.placements))  # type: ignore[attr-defined]
            layouts.setdefault(key, []).append(i)
    dtensor = dtensor_type()
    for (mesh, placements), idx in layouts.items():
        sel = torch.tensor(idx, device=stacked.device)
        reduce = [Partial() if p.is_shard() else Replicate() for p in placements]
        local = stacked.index_select(0, sel)
        total = dtensor.from_local(local, mesh, reduce, run_check=False)  # type: ignore[union-attr]
        stacked = stacked.index_copy(0, sel, total.full_tensor())
    return dict(zip(names, stacked.unbind(1)))


# ------------------------------------------------------------------ the relative step


def measure_update(
    algorithm: Algorithm,
    groups: list[dict[str, Any]],
    batches: list[GroupBatch],
    warming: Warming,
    window: int | None,
    grad_scale: Tensor | None,
    state: dict[Any, dict[str, Any]],
    layouts: Layouts,
    vectors_lead: bool = False,
) -> Statistics:
    """The size of the step torch is about to take, at full ``lr``, against the parameters.

    For every tensor of ``warming``, on its first ``window`` real coordinates (all of them if it
    has fewer, or with ``window=None``; an FSDP2 shard's first ones on each rank, the sums of
    squares all-reduced): the ``leader`` flag (the tensor has at least two dimensions, or any
    with ``vectors_lead``, and a non-zero norm) and each leader's relative step
    ``update_ratio = ||lr d|| / ||p||``, with ``d`` the update at unit lr computed ahead of torch
    from this step's gradient and the moments before it (``Algorithm.unit_update``). One flat
    pass per param group and device (the update's constants are the group's), a fixed number of
    kernels whatever the number and shapes of the tensors. Where the algorithm keeps no running
    average of the gradients (RMSprop without momentum) this stage keeps one on the window, in
    ``state[p]["warmup_grad_avg"]`` (views of one matrix per pass, :meth:`Layouts.grad_average`):
    the only state it writes.
    """
    home, step = warming.home, warming.step
    n = len(step)
    dtensor = dtensor_type()
    inv_gs = None if grad_scale is None else grad_scale.to(torch.float32).reciprocal().reshape(())
    counts = [len(b.params) for b in batches]
    lr2 = _group_vector([g["lr"] for g in groups], counts, home).square()
    step_sq = torch.zeros(n, dtype=torch.float32, device=home)
    param_sq = torch.zeros(n, dtype=torch.float32, device=home)
    static: list[float] = []
    shards: list[Tensor | None] = []
    offset = 0
    for group, batch in zip(groups, batches):
        k = len(batch.params)
        if not k:
            continue
        static += [float(vectors_lead or p.dim() >= 2) for p in batch.params]
        grads = real_views(batch.grads, batch.has_complex)
        params = real_views(batch.params, batch.has_complex)
        src = algorithm.update_sources(group, batch)
        averaged = algorithm.needs_grad_average(group)
        sharded = dtensor is not None and any(isinstance(p, dtensor) for p in params)
        if sharded:
            shards += [p if isinstance(p, dtensor) else None for p in batch.params]
            grads, params = _locals(grads), _locals(params)
            src = {name: _locals(ts) for name, ts in src.items()}
        else:
            shards += [None] * k
        lengths = [t.numel() if window is None else min(t.numel(), window) for t in grads]
        buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, g in enumerate(grads):
            dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
            buckets.setdefault((g.device, dtype), []).append(i)
        for (device, dtype), idx in buckets.items():
            layout = layouts.update_pass(
                device, home, [offset + i for i in idx], [lengths[i] for i in idx], n, dtype,
                2 + len(src), sum(grads[i].numel() for i in idx),
            )  # fmt: skip
            work: list[Tensor | None] = [None] * (2 + len(src))
            if layout.work and not torch.compiler.is_compiling():
                work = [*layout.work]
            lists = {None: grads, "p": params, **src}  # gradients first, never cached
            g, p, *rest = (
                _stats.pack_blocks(
                    _windows(layout, name, [ts[i] for i in idx], [lengths[i] for i in idx]),
                    layout.pads, out=buf,
                ).to(dtype)
                for (name, ts), buf in zip(lists.items(), work)
            )  # fmt: skip
            packed = dict(zip(src, rest))
            if averaged:  # the running average itself, laid out like the pass (no copy)
                packed["num"] = layouts.grad_average(
                    state, [batch.params[i] for i in idx], layout, dtype
                )
            if group.get("maximize", False):
                g.neg_()
            if inv_gs is not None:
                g.mul_(inv_gs.to(device, dtype))
            decay = algorithm.coupled_decay(group)
            if decay != 0.0:  # torch adds weight_decay * p after maximize negates
                g.add_(p, alpha=abs(decay))
            t = step if layout.where is None else step[layout.where]
            t = t.to(device, dtype, non_blocking=True)
            per_row: dict[str, Tensor] = {}
            if algorithm.bias_corrected:
                beta1, beta2 = (float(b) for b in group["betas"])
                per_row["bias1"] = (1 - beta1**t)[layout.rows].unsqueeze(1)
                per_row["bias2"] = (1 - beta2**t)[layout.rows].unsqueeze(1)
            if averaged:
                per_row["avg_bias"] = (1 - GRAD_AVG_DECAY**t)[layout.rows].unsqueeze(1)
                packed["num"].lerp_(g, 1 - GRAD_AVG_DECAY)  # updates the state entries
            d = algorithm.unit_update(group, g, packed, per_row)
            sums = _stats.segment_sums(_stats.update_row_sums(d, p), layout.rows, len(idx))
            where = torch.tensor([offset + i for i in idx], device=home)
            step_sq.index_copy_(0, where, sums["step_sq"].to(home, non_blocking=True))
            param_sq.index_copy_(0, where, sums["param_sq"].to(home, non_blocking=True))
        offset += k
    got = {"step_sq": step_sq, "param_sq": param_sq}
    if any(s is not None for s in shards):
        got = _sum_over_shards(got, shards)
    leader = layouts.vector(("leader", tuple(static)), static, home) * (got["param_sq"] > 0)
    step_sq, param_sq = got["step_sq"] * lr2.float() * leader, got["param_sq"] * leader
    ratio = torch.sqrt(step_sq.double() / param_sq.double().clamp_min(1e-300))
    return Statistics(leader=leader, update_ratio=torch.where(leader > 0, ratio, 0.0))


def _group_vector(values: list[Any], counts: list[int], home: torch.device) -> Tensor:
    """One float64 entry per tensor from one value (a float or a tensor) per group."""
    if all(not isinstance(v, Tensor) for v in values):
        flat = [float(v) for v, k in zip(values, counts) for _ in range(k)]
        return torch.tensor(flat, dtype=torch.float64).to(home, non_blocking=True)
    parts = [torch.as_tensor(v).reshape(()).to(home, torch.float64).expand(k)
             for v, k in zip(values, counts) if k]  # fmt: skip
    return torch.cat(parts)


def _locals(ts: list[Tensor]) -> list[Tensor]:
    """This rank's shards of DTensors (FSDP2 parameters); other tensors as they are."""
    dtensor = dtensor_type()
    return [t.to_local() if dtensor is not None and isinstance(t, dtensor) else t for t in ts]  # type: ignore[attr-defined]
