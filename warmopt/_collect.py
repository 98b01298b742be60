"""Stage 1, collect: torch's ``_init_group``, then the lazy warm-up state, as vectors.

``collect`` lists each group's tensors with a gradient exactly as torch's step does (the
algorithm's ``init_group`` *is* torch's ``_init_group``: state created lazily, step counts placed
as torch places them), then adds the ``warmup_*`` entries to the state of tensors that have none
yet, and lays the warm-up numbers of all those tensors out as one float32 vector per key whose
0-d views *are* the ``optimizer.state[p]`` entries (a step reads and writes each key with one op).
It also decides, on the host and without a sync, whether the warm-up is over: then it returns no
:class:`Warming` and the step is torch's own.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._algorithms import Algorithm, GroupBatch, resolve_mode
from ._device import HostCopy, dtensor_type, multi_rank, split_to, stack_to
from .policies import WarmupPolicy

__all__ = ["PREFIX", "Book", "Collected", "Warming", "collect", "fit_warmup_state"]

#: Prefix of warmopt's keys in ``optimizer.state[p]``.
PREFIX = "warmup_"


@dataclass
class _FlatState:
    """Warm-up state laid out as one matrix, a row per key (``vectors``: the rows, by key);
    ``entries`` are its 0-d views, in order: the ``optimizer.state[p]`` entries themselves."""

    matrix: Tensor
    vectors: dict[str, Tensor]
    entries: dict[str, list[Tensor]]


@dataclass
class Book:
    """What an optimizer remembers about its warm-up between steps (never checkpointed)."""

    #: the host knows that every scale is 1 and the policy cannot fall: the step is torch's
    done: bool = False
    #: ``len(optimizer.state)`` when ``done`` was found (a new entry means new tensors)
    done_state_count: int = -1
    #: the device's "every scale is 1", on its way to the host
    done_flag: HostCopy = field(default_factory=HostCopy)
    #: warming ``step()`` calls so far (the stagger of ``measure_every`` counts them)
    calls: int = 0
    #: a policy that can fall, once every scale is 1 (``MeasurementSpec.watch``): the spacing
    #: of its measured steps, and the calls since the last measured one
    interval: int = 1
    gap: int = 0
    flat: _FlatState | None = None
    #: the step count of each windowed tensor whose ``state['step']`` the host cannot read
    #: (fused or capturable on an accelerator), as the host knows it: counted up every step,
    #: corrected from a non-blocking copy after a GradScaler step that may have been skipped
    steps: dict[Tensor, int] = field(default_factory=dict)
    steps_copy: HostCopy = field(default_factory=HostCopy)
    steps_copied: list[tuple[int, Tensor, int]] = field(default_factory=list)
    #: each tensor's beta (float64), for the groups' betas and sizes in ``beta_key``
    beta: Tensor | None = None
    beta_key: Any = None

    def reset(self) -> None:
        """Forget everything (a loaded checkpoint, new state): the next step looks again."""
        self.done, self.done_state_count, self.calls, self.flat = False, -1, 0, None
        self.interval, self.gap = 1, 0
        self.done_flag.reset()
        self.steps.clear()
        self.steps_copy.reset()
        self.steps_copied = []
        self.beta = self.beta_key = None


@dataclass
class Warming:
    """The tensors that step with a warm-up scale this step, and their warm-up numbers."""

    params: list[Tensor]  # every tensor with a gradient, in group order
    counts: list[int]  # how many of them each group has
    home: torch.device  # where the vectors live (the first tensor's device)
    step: Tensor  # float64 step counts after this step's increment (1 on the first update)
    beta: Tensor  # float64 second-moment decay of each tensor's group
    old: dict[str, Tensor]  # "scale" and each policy key: one float32 entry per tensor
    _flat: _FlatState | None
    _entries: dict[str, list[Tensor]]
    #: ``step`` on the host where a window is measured (sampling policies), else None
    host_steps: list[int] | None = None
    #: the scales of tensors with warm-up state but no gradient in this step (None if there
    #: are none): the warm-up is over only when they are 1 too
    paused: Tensor | None = None
    _steps_cpu: Tensor | None = None

    def store(self, new: dict[str, Tensor], skipped: Tensor | None = None) -> Tensor:
        """Write this step's numbers into the state entries (a stack and a copy for all keys),
        keeping the old ones where ``skipped`` (a GradScaler step with inf/NaN gradients); return
        the scales stored."""
        keys = list(self.old)
        if self._flat is not None:
            stacked = torch.stack([new[k] for k in keys])
            if skipped is not None:
                stacked = torch.where(skipped, self._flat.matrix, stacked)
            self._flat.matrix.copy_(stacked)  # the state entries are views of it
            return self._flat.vectors["scale"]
        for key in keys:
            vector = new[key] if skipped is None else torch.where(skipped, self.old[key], new[key])
            torch._foreach_copy_(self._entries[key], split_to(vector, self._entries[key]))
            new[key] = vector
        return new["scale"]


@dataclass
class Collected:
    """What the step works on: each group's tensors, torch's code path for each group, and the
    warm-up numbers (``None`` without a policy or once the warm-up is over)."""

    batches: list[GroupBatch]
    modes: list[str]
    warming: Warming | None


def collect(
    opt: Optimizer,
    algorithm: Algorithm,
    policy: WarmupPolicy | None,
    book: Book,
    cpu_is_host: bool = True,
    found_inf: Tensor | None = None,
) -> Collected:
    """torch's ``_init_group`` for every group, then the lazy warm-up state (see the module).

    ``cpu_is_host=False`` (``WARMOPT_DEVICE_PATH_ON_CPU``) treats CPU step counts as unreadable,
    as on an accelerator."""
    groups = opt.param_groups
    sample = None if policy is None else policy.spec.sample
    fresh: set[int] = set()
    if sample is not None and not book.done and _steps_on_device(groups, cpu_is_host):
        # tensors whose state torch creates now: their step count starts at 0 (no read needed)
        fresh = {
            id(p)
            for g in groups
            for p in g["params"]
            if p.grad is not None and _real_numel(p) > sample and not opt.state.get(p)
        }
    batches = [algorithm.init_group(opt, g) for g in groups]
    modes = [resolve_mode(g, b.params) for g, b in zip(groups, batches)]
    warming = None
    if policy is not None:
        warming = _warming(opt, algorithm, policy, book, batches)
    if (
        warming is not None
        and sample is not None
        and any(_real_numel(p) > sample for p in warming.params)
    ):
        steps = [s for b in batches for s in b.state_steps]
        warming.host_steps = _host_steps(book, warming, steps, sample, fresh, cpu_is_host)
        if found_inf is not None and book.steps_copied and not book.steps_copy.pending:
            # the device skips the step where found_inf: learn the counts it keeps, later
            skipped = (found_inf.to(warming.home) > 0).to(torch.float64)
            book.steps_copy.publish(warming.step - skipped)
    return Collected(batches, modes, warming)


def _steps_on_device(groups: list[dict[str, Any]], cpu_is_host: bool) -> bool:
    """Whether some step count may be unreadable on the host: a capturable or fused group off
    the CPU keeps it on its device (or every group, with the device path forced on the CPU)."""
    if not cpu_is_host:
        return True
    return any(
        (g.get("capturable") or g.get("fused")) and g["params"][0].device.type != "cpu"
        for g in groups
        if g["params"]
    )


def _host_steps(
    book: Book,
    warming: Warming,
    steps: list[Tensor],
    sample: int,
    fresh: set[int],
    cpu_is_host: bool,
) -> list[int]:
    """``warming.step`` on the host, for the tensors measured on a window (0 for the others).

    Read from the step counts where they live on the CPU (free). Otherwise (fused or
    capturable on an accelerator) from the host's own count, ``Book.steps``: counted up on every
    step as if it was taken, corrected after a GradScaler step from a non-blocking copy of the
    device's counts (``Book.steps_copy``), started at 0 for a tensor whose state torch creates in
    this step, and read from the device only the first time the host meets a tensor with
    existing state (after wrapping a stepped optimizer or unpickling one: one sync, once).
    """
    if cpu_is_host and all(s.device.type == "cpu" for s in steps):  # readable for free
        stacked = warming._steps_cpu if warming._steps_cpu is not None else torch.stack(steps)
        return [int(t) + 1 for t in stacked.tolist()]
    copied = book.steps_copy.poll()
    if copied is not None:
        for i, p, guessed in book.steps_copied:
            if p in book.steps:
                book.steps[p] += int(copied[i]) - guessed
        book.steps_copy.reset()
    dtensor = dtensor_type()
    params = warming.params
    need = [
        i
        for i, p in enumerate(params)
        if _real_numel(p) > sample and not (dtensor is not None and isinstance(p, dtensor))
    ]
    for i in need:
        if id(params[i]) in fresh:  # state created in this step (again, after a reset): 0
            book.steps[params[i]] = 0
    unknown = [i for i in need if params[i] not in book.steps]
    if unknown:
        for i, t in zip(unknown, torch.stack([steps[i] for i in unknown]).tolist()):
            book.steps[params[i]] = int(t)
    out = [0] * len(params)
    counted = []
    for i in need:
        p = params[i]
        out[i] = book.steps[p] = book.steps.get(p, 0) + 1
        counted.append((i, p, out[i]))
    if not book.steps_copy.pending:
        book.steps_copied = counted  # what a copy published in this step will correct
    return out


def _real_numel(p: Tensor) -> int:
    """Real coordinates of ``p`` (complex ones count twice, as their real views)."""
    return p.numel() * (2 if p.is_complex() else 1)


def _warming(
    opt: Optimizer,
    algorithm: Algorithm,
    policy: WarmupPolicy,
    book: Book,
    batches: list[GroupBatch],
) -> Warming | None:
    keys = ["scale", *policy.state_init]
    names = [PREFIX + k for k in keys]
    if book.done and len(opt.state) == book.done_state_count:
        # Nothing got state since warm-up finished (a parameter's first gradient, a loaded
        # checkpoint, an added group would): skip even the host-side walk over the tensors.
        return None
    if policy.spec.watch > 1 and _watch_idle(book, policy.spec.watch, len(opt.state)):
        return None
    params = [p for b in batches for p in b.params]
    states = [opt.state[p] for p in params]
    fresh = [i for i, st in enumerate(states) if names[0] not in st]
    if fresh:
        initial = {"scale": 0.0, **policy.initial_state()}
        for i in fresh:
            for key, name in zip(keys, names):
                states[i][name] = torch.tensor(
                    initial[key], dtype=torch.float32, device=params[i].device
                )
        book.done = False
        book.done_flag.reset()
        book.interval, book.gap = 1, 0
    elif not book.done and not policy.spec.can_fall:
        book.done = bool(book.done_flag.poll())
    if book.done:
        book.done_state_count = len(opt.state)
        return None

    counts = [len(b.params) for b in batches]
    if not params:
        empty = torch.zeros(0, dtype=torch.float64)
        return Warming(params, counts, torch.device("cpu"), empty, empty, {}, None, {})
    home = params[0].device
    # step and beta in float64: 1 - beta must be exact for the closed forms (float32 0.999 gives
    # an untuned-linear period of 2000.03 steps, i.e. one step late).
    steps = [s for b in batches for s in b.state_steps]
    stacked = stack_to(steps, home)
    step = stacked.double() + 1
    betas = [algorithm.beta(g) for g in opt.param_groups]
    if any(isinstance(b, Tensor) for b in betas):  # may change in place: read every step
        beta = _per_tensor(betas, counts, home)
    else:
        beta_key = (tuple(betas), tuple(counts), home)
        if book.beta_key != beta_key:
            book.beta, book.beta_key = _per_tensor(betas, counts, home), beta_key
        beta = book.beta  # type: ignore[assignment]
    current = {k: [st[name] for st in states] for k, name in zip(keys, names)}
    flat = _flat_state(book, states, current, home)
    if flat is not None:
        old = dict(flat.vectors)
    else:
        old = {k: stack_to(current[k], home) for k in keys}
    warming = Warming(params, counts, home, step, beta, old, flat, current)
    if len(opt.state) > len(params):  # some tensors with state have no gradient now
        stepping = set(map(id, params))
        paused = [
            st[names[0]] for q, st in opt.state.items()
            if id(q) not in stepping and names[0] in st
        ]  # fmt: skip
        if paused:
            warming.paused = stack_to(paused, home)
    if stacked.device.type == "cpu":
        warming._steps_cpu = stacked  # the step counts before this step, gathered on the CPU
    return warming


def _watch_idle(book: Book, watch: int, n_state: int) -> bool:
    """Whether this call of a policy that can fall is one of the unmeasured steps between two
    measured ones (see ``MeasurementSpec.watch``).

    The answer of each measured step ("every scale is 1") travels to the host in a non-blocking
    copy and is read once it has arrived (an event query on an accelerator, at once on the
    CPU): every scale at 1 doubles the spacing of measured steps (up to ``watch``), a scale
    below 1 brings back every step. Until it arrives the current spacing holds, so a host that
    runs ahead of its device is not held at every step; a new answer is not sent while an older
    one is unread (``HostCopy.publish(keep=True)``)."""
    if n_state != book.done_state_count:  # a tensor got state: measure, every step
        book.interval, book.gap = 1, 0
        book.done_state_count = n_state
        book.done_flag.reset()
        return False
    # Several ranks (DDP, FSDP2) measure the same numbers and must agree on which steps they
    # measure: there each waits for the answer (sent on an earlier call, so the wait is on
    # work enqueued a step or more earlier, not a drain of the device); one process never waits.
    flag = book.done_flag.poll(wait=multi_rank()) if book.done_flag.pending else None
    if flag is not None:
        book.done_flag.reset()
        book.interval = min(2 * book.interval, watch) if flag else 1
    if book.interval > 1 and book.gap + 1 < book.interval:  # gap: calls since the last measured
        book.gap += 1
        return True
    book.gap = 0
    return False


def _flat_state(
    book: Book,
    states: list[dict[str, Any]],
    current: dict[str, list[Tensor]],
    home: torch.device,
) -> _FlatState | None:
    """One float32 vector per warm-up key, whose entries *are* the 0-d ``warmup_*`` state
    tensors of ``states`` (views), so a step reads and writes each key with one op instead of
    a stack and a copy per tensor.

    Re-laid out whenever the state tensors are not the views of the last layout (first
    step, a new tensor, a different set of tensors with gradients, a loaded checkpoint), by
    copying their values into a fresh vector and storing its views in the state; ``None``
    (stack and copy, per tensor) when they live on more than one device.
    """
    cached = book.flat
    if cached is not None and all(
        len(cached.entries[k]) == len(ts) and all(map(operator.is_, cached.entries[k], ts))
        for k, ts in current.items()
    ):
        return cached
    if any(t.device != home for t in next(iter(current.values()))):
        book.flat = None
        return None
    keys = list(current)
    matrix = torch.stack([torch.stack(current[k]).to(torch.float32) for k in keys])
    vectors = dict(zip(keys, matrix.unbind(0)))
    entries = {k: list(v.unbind(0)) for k, v in vectors.items()}
    for k, views in entries.items():
        name = PREFIX + k
        for st, view in zip(states, views):
            st[name] = view
    book.flat = _FlatState(matrix, vectors, entries)
    return book.flat


def _per_tensor(values: list[float | Tensor], counts: list[int], device: torch.device) -> Tensor:
    """Expand one value per group to one float64 entry per tensor, on ``device``."""
    if all(not isinstance(v, Tensor) for v in values):
        flat = [float(v) for v, n in zip(values, counts) for _ in range(n)]
        return torch.tensor(flat, dtype=torch.float64).to(device, non_blocking=True)
    parts = [
        torch.as_tensor(v).reshape(()).to(device, torch.float64).expand(n)
        for v, n in zip(values, counts)
        if n
    ]
    return torch.cat(parts)


def fit_warmup_state(state: dict[Any, dict[str, Any]], policy: WarmupPolicy | None) -> None:
    """Make loaded ``warmup_*`` entries those of ``policy``: drop the keys it does not use, and
    where a parameter has some but not all of the keys it needs (a checkpoint saved under
    another policy), add the missing ones at their initial values. A parameter with none keeps
    none: its warm-up state is created on its next step."""
    initial = {} if policy is None else {"scale": 0.0, **policy.initial_state()}
    wanted = {PREFIX + k for k in initial}
    buffers = set() if policy is None else {PREFIX + k for k in policy.spec.buffers}
    for p, st in state.items():
        present = [k for k in st if isinstance(k, str) and k.startswith(PREFIX)]
        for key in present:
            if key not in wanted and key not in buffers:
                del st[key]
        if not any(key in wanted for key in present):
            continue
        for name, value in initial.items():
            if PREFIX + name not in st:
                st[PREFIX + name] = torch.tensor(value, dtype=torch.float32, device=p.device)
