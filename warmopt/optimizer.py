"""WarmupOptimizer: torch's Adam / AdamW / RMSprop step with a measured warm-up inside ``step()``.

Data path of one step (read top-down):

1. ``_init_group`` of the torch class lists the tensors with a gradient and creates their state
   lazily, exactly as torch does; the warm-up keys (``warmup_scale`` ...) are added after it.
2. ``_advance_warmup`` (only while some scale is below 1, or the policy may re-warm) measures the
   fresh-ratio statistics against the *previous* second moment, runs the policy once for all
   tensors (1-D tensors, a constant number of ops) and writes the new scales into the state.
3. The update at ``lr * scale`` per tensor (``_step.py``): in foreach mode warmopt's own copy of
   torch's foreach Adam/AdamW (``scaled_adam_foreach``) or RMSprop (``scaled_rmsprop_foreach``)
   step with a per-tensor step size; in single-tensor mode on the CPU torch's own per-tensor
   update with ``lr * scale`` as a host float (``scaled_single``); in fused mode one fused call
   per large tensor (``scaled_adam_fused_each``). Otherwise ``run_group`` runs torch's own
   functional update and moves each tensor back by ``1 - scale`` of its step.

The scale never touches ``param_groups[i]['lr']``: LR schedulers own it, the warm-up multiplies it
inside the step.
"""

from __future__ import annotations

import math
import operator
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Adam, AdamW, Optimizer, RMSprop
from torch.optim.optimizer import ParamsT, _get_scalar_dtype, _use_grad_for_differentiable

from . import _stats
from ._step import (
    ALGORITHMS,
    RMSPROP,
    Algorithm,
    GroupBatch,
    _real,
    fused_large,
    reads_on_host,
    resolve_mode,
    run_group,
    scaled_adam_foreach,
    scaled_adam_fused_each,
    scaled_adam_ok,
    scaled_rmsprop_foreach,
    scaled_rmsprop_ok,
    scaled_single,
    scaled_single_ok,
    split_to,
)
from .policies import Statistics, WarmupPolicy, resolve_policy

__all__ = ["WarmupOptimizer", "GRANULARITIES"]

#: Units the scale is computed for: each parameter tensor, each param group, or the whole optimizer.
GRANULARITIES = ("tensor", "group", "global")
_PREFIX = "warmup_"


def _check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"Invalid granularity: {granularity!r} (expected one of {', '.join(GRANULARITIES)})"
        )
    return granularity


class _HostFlag:
    """A device boolean made readable on the host without a sync.

    ``publish`` starts a non-blocking copy to pinned host memory; ``poll`` returns the value
    once the copy has finished (an event query, not a wait) and ``None`` before. On the CPU the
    value is there at once. Used to learn that warm-up has finished, one step or more late.
    """

    def __init__(self) -> None:
        self._host: Tensor | None = None
        self._event: Any = None

    def reset(self) -> None:
        self._host, self._event = None, None

    def publish(self, value: Tensor) -> None:
        if value.device.type == "cpu":
            self._host, self._event = value, None
        elif value.device.type == "cuda":
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(value, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
            self._host, self._event = host, event
        else:  # other accelerators: never read, so warm-up work simply continues
            self._host, self._event = None, None

    def poll(self) -> bool | None:
        if self._host is None or (self._event is not None and not self._event.query()):
            return None
        # .tolist() reads host memory directly: no dispatched op, no device sync, and unlike
        # .numpy() it needs no NumPy (warmopt depends on torch only).
        return bool(self._host.tolist())


def _stack_to(tensors: list[Tensor], device: torch.device) -> Tensor:
    """Stack 0-d tensors (possibly on several devices) into a float32 vector on ``device``."""
    devices = {t.device for t in tensors}
    if len(devices) == 1:
        return torch.stack(tensors).to(device=device, dtype=torch.float32, non_blocking=True)
    out = torch.empty(len(tensors), dtype=torch.float32, device=device)
    for dev in devices:  # one iteration per device, not per tensor
        idx = [i for i, t in enumerate(tensors) if t.device == dev]
        part = torch.stack([tensors[i] for i in idx]).to(device=device, dtype=torch.float32)
        out[torch.tensor(idx, device=device)] = part
    return out


def _write(vector: Tensor, targets: list[Tensor]) -> None:
    """Copy the entries of ``vector`` into the 0-d tensors ``targets`` (foreach, per device)."""
    torch._foreach_copy_(targets, split_to(vector, targets))


@dataclass
class _FlatState:
    """Warm-up state laid out as one vector per key; ``entries`` are its 0-d views, in order."""

    vectors: dict[str, Tensor]
    entries: dict[str, list[Tensor]]


class WarmupOptimizer(Optimizer):
    r"""Adam (or a wrapped Adam/AdamW/RMSprop) that warms itself up from its own statistics.

    Built from parameters, it takes every argument of :class:`torch.optim.Adam` with the same
    name, default and meaning, plus keyword-only warm-up options; built from an instance of
    :class:`torch.optim.Adam`, :class:`~torch.optim.AdamW` or :class:`~torch.optim.RMSprop`, it
    takes over that optimizer's param groups and state (shared, not copied) and steps them itself.

    Each step runs torch's own update at ``lr * s``, where the scale ``s`` in [0, 1] comes from
    the warm-up policy (:class:`warmopt.Measured` by default). ``param_groups[i]['lr']`` is never
    written, so LR schedulers compose with it as with Adam.

    Args:
        params (iterable or Optimizer): parameters or param groups, as for torch.optim.Adam, or an
            Adam/AdamW/RMSprop instance to wrap (then the Adam hyperparameters below must be left
            at their defaults: they come from the instance).
        lr, betas, eps, weight_decay, amsgrad, foreach, maximize, capturable, differentiable,
            fused, decoupled_weight_decay: as :class:`torch.optim.Adam`.
        warmup (WarmupPolicy, str or None, optional): the policy or its name: ``"measured"``
            (default), ``"radam"``, ``"untuned_linear"``, ``"untuned_exponential"``,
            ``"linear"`` (1000 steps; pass ``warmopt.Linear(n)`` for another length),
            ``"constant"`` or ``"none"``/``None`` (off: torch's step exactly).
        granularity (str, optional): ``"tensor"`` (default: one scale per parameter tensor),
            ``"group"`` (one per param group) or ``"global"`` (one for the optimizer).

    Example:
        >>> import torch, warmopt
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = warmopt.WarmupOptimizer(model.parameters(), lr=3e-4, betas=(0.9, 0.999))
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()
        >>> [round(float(s), 3) for s in opt.warmup_scale[0]]
        [0.035, 0.035]
        >>> wrapped = warmopt.WarmupOptimizer(torch.optim.RMSprop(model.parameters(), lr=1e-3))
    """

    #: Whether the constructor takes an optimizer instance to wrap (warmopt.Adam, AdamW and
    #: RMSprop take parameters only, as their torch namesakes).
    _wraps_optimizers: ClassVar[bool] = True

    def __init__(
        self,
        params: ParamsT | Optimizer,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        warmup: WarmupPolicy | str | None = "measured",
        granularity: str = "tensor",
    ) -> None:
        _check_params(type(self), params)
        policy = resolve_policy(warmup)
        _check_granularity(granularity)
        if isinstance(params, Optimizer):
            given = {
                "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                "amsgrad": amsgrad, "foreach": foreach, "maximize": maximize,
                "capturable": capturable, "differentiable": differentiable, "fused": fused,
                "decoupled_weight_decay": decoupled_weight_decay,
            }  # fmt: skip
            defaults = {
                "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
                "differentiable": False, "fused": None, "decoupled_weight_decay": False,
            }  # fmt: skip
            changed = [k for k, v in given.items() if not _same(v, defaults[k])]
            if changed:
                raise TypeError(
                    "WarmupOptimizer(optimizer, ...) takes its hyperparameters from the wrapped "
                    f"optimizer; got {', '.join(changed)} as well. Set them on the optimizer."
                )
            base = params
        else:
            base = Adam(
                params,
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                foreach=foreach,
                maximize=maximize,
                capturable=capturable,
                differentiable=differentiable,
                fused=fused,
                decoupled_weight_decay=decoupled_weight_decay,
            )
        self._adopt(base, policy, granularity)

    # ------------------------------------------------------------------ set-up

    def _adopt(self, base: Optimizer, policy: WarmupPolicy | None, granularity: str) -> None:
        """Take over ``base``'s param groups, defaults and state (shared objects)."""
        algorithm = ALGORITHMS.get(type(base))
        if algorithm is None:
            raise TypeError(
                "WarmupOptimizer supports torch.optim.Adam, torch.optim.AdamW and "
                f"torch.optim.RMSprop instances, got {type(base).__module__}."
                f"{type(base).__qualname__}"
            )
        if policy is not None and algorithm is RMSPROP:
            for group in base.param_groups:
                if not 0.0 <= group["alpha"] < 1.0:
                    raise ValueError(
                        f"Invalid alpha value: {group['alpha']} (warm-up needs 0 <= alpha < 1)"
                    )
        groups = [dict(g) for g in base.param_groups]
        super().__init__(groups, base.defaults)
        self.param_groups = base.param_groups
        self.state = base.state
        self.defaults = base.defaults
        self._base_class: type[Optimizer] = type(base)
        self._algorithm: Algorithm = algorithm
        self._step_supports_amp_scaling = bool(getattr(base, "_step_supports_amp_scaling", False))
        self.warmup: WarmupPolicy | None = policy
        self.granularity = granularity
        self._warmup_done = False
        self._done_state_count = -1
        self._done_flag = _HostFlag()
        self._warm_calls = 0
        self._flat: _FlatState | None = None
        self._seen_lrs: list[float | None] = []
        self._lr_rise_warned = False

    def __repr__(self) -> str:
        """torch's ``Optimizer.__repr__`` (class name and every param group), with two more
        lines: the warm-up policy and the granularity."""
        text = super().__repr__()
        return f"{text[:-1]}warmup: {self.warmup!r}\ngranularity: {self.granularity}\n)"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(
            _base_name=self._base_class.__name__,
            _step_supports_amp_scaling=self._step_supports_amp_scaling,
            warmup=self.warmup,
            granularity=self.granularity,
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's load_state_dict calls __setstate__ too, with only "state" and "param_groups":
        # keep the current algorithm then (defaulting to Adam made a loaded RMSprop step as Adam).
        name = state.pop("_base_name", None)
        legacy = state.pop("_algorithm_name", None)  # pickles made before _base_name
        super().__setstate__(state)
        if name is None and (legacy is not None or "_base_class" not in self.__dict__):
            # "adam" served AdamW too: its defaults tell them apart
            decoupled = self.defaults.get("decoupled_weight_decay", False)
            name = "RMSprop" if legacy == "rmsprop" else "AdamW" if decoupled else "Adam"
        if name is not None:
            self._base_class = _BASES[name]
        self._algorithm = ALGORITHMS[self._base_class]
        _fill_in_as_torch(self._base_class, self.param_groups, self.state)
        self._seen_lrs = []  # the loaded lrs are not a rise
        self._lr_rise_warned = self.__dict__.get("_lr_rise_warned", False)
        self._warmup_done = False
        self._done_state_count = -1
        self._done_flag = _HostFlag()
        self._warm_calls = 0
        self._flat = None

    @torch._disable_dynamo  # type: ignore[attr-defined]
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`, keeping the warm-up numbers float32.

        torch casts every per-parameter state tensor except ``step`` to the parameter's dtype; a
        bfloat16 copy of a scale keeps 3 digits, so the ``warmup_*`` entries are restored from the
        saved values in float32. A checkpoint without them (plain torch.optim.Adam) loads too: the
        warm-up state is then created on the next step and the policy restarts from the
        checkpoint's step count (see docs/warmup.md, "Resuming").

        A checkpoint saved under another policy loads the same way: the ``warmup_*`` entries
        this optimizer's policy does not use are dropped (all of them with ``warmup=None``), and
        those it needs but the checkpoint lacks start from their initial values, so the policy
        continues from the checkpoint's step counts as from a plain torch checkpoint. Under
        another granularity the per-tensor numbers are pooled into the new units on the next
        step, as on every step (a unit is as far along as its least-warmed tensor).
        """
        # The restore works through temporary hooks so that user hooks keep torch's semantics:
        # the pre-hook runs after the user's and reads the state dict they returned (reading the
        # argument ignored their changes), the post-hook runs before theirs (restoring after
        # super() overwrote what their post-hooks set, and they saw bfloat16-cast numbers).
        loaded: list[dict[str, Any]] = []
        pre = self.register_load_state_dict_pre_hook(lambda _, sd: loaded.append(sd))
        post = self.register_load_state_dict_post_hook(
            lambda _: self._restore_warmup_state(loaded[-1]), prepend=True
        )
        try:
            super().load_state_dict(state_dict)
        finally:
            pre.remove()
            post.remove()
        self._warmup_done = False
        self._done_flag.reset()
        self._warm_calls = 0
        self._flat = None
        self._seen_lrs = []

    def _restore_warmup_state(self, state_dict: dict[str, Any]) -> None:
        """Copy the saved ``warmup_*`` entries into the state as float32 (torch cast them), then
        fit them to this optimizer's policy."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            for key, value in saved.items():
                if isinstance(key, str) and key.startswith(_PREFIX) and isinstance(value, Tensor):
                    self.state[p][key] = value.detach().to(
                        dtype=torch.float32, device=p.device, copy=True
                    )
        self._fit_warmup_state()

    def _fit_warmup_state(self) -> None:
        """Make loaded ``warmup_*`` entries those of this optimizer's policy: drop the keys it
        does not use, and where a parameter has some but not all of the keys it needs (a
        checkpoint saved under another policy), add the missing ones at their initial values.
        A parameter with none keeps none: its warm-up state is created on its next step."""
        policy = self.warmup
        initial = {} if policy is None else {"scale": 0.0, **policy.initial_state()}
        wanted = {_PREFIX + k for k in initial}
        for p, st in self.state.items():
            present = [k for k in st if isinstance(k, str) and k.startswith(_PREFIX)]
            for key in present:
                if key not in wanted:
                    del st[key]
            if not any(key in wanted for key in present):
                continue
            for name, value in initial.items():
                if _PREFIX + name not in st:
                    st[_PREFIX + name] = torch.tensor(value, dtype=torch.float32, device=p.device)

    # ------------------------------------------------------------------ the step

    @_use_grad_for_differentiable
    def step(self, closure: Any = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the
                loss; it runs with gradients enabled, as in torch.
        """
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        _check_not_sparse(self.param_groups)
        if self.warmup is not None and not self._lr_rise_warned:
            self._check_lr_rise()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        batches = [self._algorithm.init_group(self, g) for g in self.param_groups]
        modes = [resolve_mode(g, b.params) for g, b in zip(self.param_groups, batches)]
        warm = None
        if self.warmup is not None:
            warm = self._advance_warmup(batches, modes, grad_scale, found_inf)
        start = 0
        for group, batch, mode in zip(self.param_groups, batches, modes):
            n = len(batch.params)
            if warm is None or n == 0:
                run_group(self._algorithm, group, batch, mode, None, grad_scale, found_inf)
                continue
            scale, step = warm[0][start : start + n], warm[1][start : start + n]
            start += n
            if scaled_adam_ok(self._algorithm, group, batch, mode, grad_scale, found_inf):
                scaled_adam_foreach(group, batch, scale, step)
                continue
            if scaled_rmsprop_ok(self._algorithm, group, batch, mode):
                scaled_rmsprop_foreach(group, batch, scale)
                continue
            if scaled_single_ok(group, mode, scale):
                scaled_single(self._algorithm, group, batch, scale, grad_scale, found_inf)
                continue
            large = fused_large(self._algorithm, group, batch, mode)
            if large:
                rest = sorted(set(range(n)) - set(large))
                pick = torch.tensor(large + rest).to(scale.device, non_blocking=True)
                picked = scale[pick]
                scale_large, scale = picked[: len(large)], picked[len(large) :]
                scaled_adam_fused_each(
                    group, batch.select(large), scale_large, grad_scale, found_inf
                )
                batch = batch.select(rest)
            keep = split_to((1.0 - scale).float(), batch.params)
            run_group(self._algorithm, group, batch, mode, keep, grad_scale, found_inf)
        return loss

    def _check_lr_rise(self) -> None:
        """Warn once if a group's ``lr`` rose since the previous step while still warming up.

        A rising ``lr`` during warm-up is a scheduler with a warm-up of its own (``LinearLR``,
        ``OneCycleLR``, Hugging Face's ``get_*_schedule_with_warmup``): its ramp and warmopt's
        multiply. Compared on the host, only where ``lr`` is a Python number (a tensor ``lr`` is
        skipped: reading it could sync with the device); a rise of less than one part in 10^6 is
        float rounding, not a ramp. Decaying and constant schedules never rise.
        """
        lrs = [g["lr"] for g in self.param_groups]
        if not self._warmup_done:
            for i, (lr, before) in enumerate(zip(lrs, self._seen_lrs)):
                if before is not None and isinstance(lr, (int, float)) and lr > before * _RISE:
                    self._lr_rise_warned = True
                    warnings.warn(
                        f"{type(self).__name__}: the lr of param group {i} rose from {before:.3g} "
                        f"to {lr:.3g} while warmopt is still warming up, so the scheduler's "
                        "warm-up and warmopt's multiply. Drop the warm-up phase of the LR "
                        "schedule (warmopt warms up by itself), or pass warmup=None to keep the "
                        "schedule's warm-up only.",
                        UserWarning,
                        stacklevel=2,
                    )
                    return
        self._seen_lrs = [
            float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None
            for lr in lrs
        ]

    def _advance_warmup(
        self,
        batches: list[GroupBatch],
        modes: list[str],
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> tuple[Tensor, Tensor] | None:
        """Update every warm-up scale for this step; return the scales and step counts (after
        this step's increment) of all tensors with a gradient, in group order, on one device.

        Returns ``None`` once every scale is known (on the host, without a sync) to be 1 and the
        policy cannot fall again: the step is then exactly torch's.
        """
        policy = self.warmup
        assert policy is not None
        keys = ["scale", *policy.state_init]
        if self._warmup_done and len(self.state) == self._done_state_count:
            # Nothing got state since warm-up finished (a parameter's first gradient, a loaded
            # checkpoint, an added group would): skip even the host-side walk over the tensors.
            return None
        fresh = False
        initial = {"scale": 0.0, **policy.initial_state()}
        for batch in batches:
            for p in batch.params:
                st = self.state[p]
                if _PREFIX + "scale" not in st:
                    fresh = True
                    for key in keys:
                        st[_PREFIX + key] = torch.tensor(
                            initial[key], dtype=torch.float32, device=p.device
                        )
        if fresh:
            self._warmup_done = False
            self._done_flag.reset()
        elif not self._warmup_done and not policy.can_fall:
            self._warmup_done = bool(self._done_flag.poll())
        if self._warmup_done:
            self._done_state_count = len(self.state)
            return None

        params = [p for b in batches for p in b.params]
        if not params:
            empty = torch.zeros(0, dtype=torch.float64)
            return empty, empty
        home = params[0].device
        states = [self.state[p] for p in params]
        # step and beta in float64: 1 - beta must be exact for the closed forms (float32 0.999 gives
        # an untuned-linear period of 2000.03 steps, i.e. one step late).
        step = _stack_to([s for b in batches for s in b.state_steps], home).double() + 1
        beta = _per_tensor(
            [self._algorithm.beta(g) for g in self.param_groups],
            [len(b.params) for b in batches],
            home,
        )
        current = {k: [s[_PREFIX + k] for s in states] for k in keys}
        flat = self._flat_state(states, current, home)
        if flat is not None:
            old = dict(flat.vectors)
        else:
            old = {k: _stack_to(current[k], home) for k in keys}
        stats = None
        if policy.needs_statistics:
            every = int(getattr(policy, "measure_every", 1))
            size = getattr(policy, "sample", None)
            pick = None
            if every > 1:
                # staggered: tensor number j (in param_groups order) on calls j+1, j+1+k, ...
                # (call 0 is step 1, which has nothing to measure against)
                number = {
                    id(q): j
                    for j, q in enumerate(q for g in self.param_groups for q in g["params"])
                }
                calls = self._warm_calls
                pick = [(calls - 1 - number[id(q)]) % every == 0 for q in params]
            stats = self._measure(
                batches, modes, step, beta, grad_scale, found_inf, home, every, size, pick
            )
        self._warm_calls += 1

        units, n_units = self._units(batches, home)
        if units is None:
            scale, new = policy.update(
                {k: old[k] for k in policy.state_init},
                step,
                beta,
                stats,
                bias_corrected=self._algorithm.bias_corrected,
            )
        else:
            scale, new = self._pooled_update(policy, old, step, beta, stats, units, n_units)
        new["scale"] = scale
        if found_inf is not None:
            skipped = found_inf.to(home, torch.float32, non_blocking=True) > 0
            new = {k: torch.where(skipped, old[k], v) for k, v in new.items()}
        for key in keys:
            if flat is not None:
                flat.vectors[key].copy_(new[key])  # the state entries are views of it
            else:
                _write(new[key], current[key])
        if not policy.can_fall:
            self._done_flag.publish((new["scale"] >= 1.0).all())

        return new["scale"], step

    def _flat_state(
        self,
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
        cached = self._flat
        if cached is not None and all(
            len(cached.entries[k]) == len(ts) and all(map(operator.is_, cached.entries[k], ts))
            for k, ts in current.items()
        ):
            return cached
        if any(t.device != home for t in next(iter(current.values()))):
            self._flat = None
            return None
        vectors = {k: torch.stack(ts).to(torch.float32) for k, ts in current.items()}
        entries = {k: list(v.unbind(0)) for k, v in vectors.items()}
        for k, views in entries.items():
            for st, view in zip(states, views):
                st[_PREFIX + k] = view
        self._flat = _FlatState(vectors, entries)
        return self._flat

    def _measure(
        self,
        batches: list[GroupBatch],
        modes: list[str],
        step: Tensor,
        beta: Tensor,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        home: torch.device,
        every: int = 1,
        size: int | None = None,
        pick: list[bool] | None = None,
    ) -> Statistics:
        """Fresh-ratio sums for every tensor, in the same order as ``step``.

        With ``size``, each plain tensor longer than that is measured on a window of ``size``
        coordinates chosen by its step count (``_stats.window_starts``; see ``_windows``);
        DTensor shards are measured whole. With ``pick`` (one flag per tensor) only the flagged
        tensors are measured; the others get zero sums and ``valid = 0``.
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
        for mode, batch, group in zip(modes, batches, self.param_groups):
            n = len(batch.params)
            chosen = list(range(n))
            if pick is not None:
                chosen = [i for i in chosen if pick[offset + i]]
                if len(chosen) < n:
                    batch = batch.select(chosen)
            if not chosen:
                offset += n
                continue
            decay = self._algorithm.coupled_decay(group)
            grads = _local_shards(_real(batch.grads, batch.has_complex))
            sqs = _local_shards(_real(batch.second_moments, batch.has_complex))
            ps = _local_shards(_real(batch.params, batch.has_complex))
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
                    grads, sqs, ps = self._windows([grads, sqs, ps], cut, mine, size, every, decay)
            if mode == "single" and size is None:
                # every coordinate measured: one tensor at a time keeps the temporaries to one
                # tensor, as torch's single-tensor step does; with windows they are bounded by
                # ``size`` per tensor and one foreach call serves them all
                buckets = [
                    ([[g], [v], [p]], [i]) for i, (g, v, p) in enumerate(zip(grads, sqs, ps))
                ]
            else:
                grouped = Optimizer._group_tensors_by_device_and_dtype(
                    [grads, sqs, ps],  # type: ignore[list-item]
                    with_indices=True,
                )
                buckets = list(grouped.values())  # type: ignore[arg-type]
            for (g_all, v_all, p_all), idx_all in buckets:
                dev = g_all[0].device
                gs = None if inv_gs2 is None else inv_gs2.to(dev)
                for sub, stacked in _stat_calls(g_all):
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
        count = self._counts(batches, home, size)
        valid = ((step >= 2) & (count > 0)).float()
        if pick is not None:
            valid = valid * torch.tensor(pick, dtype=torch.float32).to(home, non_blocking=True)
        if found_inf is not None:
            valid = valid * (found_inf.to(home, torch.float32) == 0).float()
        return Statistics(sum_r=sum_r, sum_r2=sum_r2, count=count, valid=valid)

    @staticmethod
    def _windows(
        lists: list[list[Tensor]],
        cut: list[bool],
        step: Tensor,
        size: int,
        every: int,
        decay: float,
    ) -> list[list[Tensor]]:
        """``lists`` (gradients, second moments, parameters) with each ``cut`` tensor replaced by
        its measured window; parameters only where coupled decay reads them. Views when the
        step counts are on the CPU (the starts are then read on the host at no cost), gathers
        on the device otherwise (no host read)."""
        which = [i for i, c in enumerate(cut) if c]
        like = [lists[0][i] for i in which]
        numel = torch.tensor([t.numel() for t in like], dtype=torch.float64)
        pick = torch.tensor(which).to(step.device, non_blocking=True)
        starts = _stats.window_starts(
            step[pick], numel.to(step.device, non_blocking=True), size, every
        )
        out = [list(ts) for ts in lists]
        # the statistics read the parameters only with coupled decay
        windowed = list(zip(out, lists))[: 3 if decay != 0.0 else 2]
        if reads_on_host(step):
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

    @staticmethod
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
                    n if n <= size or isinstance(g, dtensor) else size
                    for n, g in zip(counts, grads)
                ]
        return torch.tensor(counts, dtype=torch.float32).to(home, non_blocking=True)

    def _units(self, batches: list[GroupBatch], home: torch.device) -> tuple[Tensor | None, int]:
        """Unit index of each tensor for group/global granularity (``None`` for per tensor)."""
        if self.granularity == "tensor":
            return None, 0
        if self.granularity == "global":
            ids = [0 for b in batches for _ in b.params]
            return torch.tensor(ids, device=home), 1
        ids = [gi for gi, b in enumerate(batches) for _ in b.params]
        return torch.tensor(ids, device=home), len(batches)

    def _pooled_update(
        self,
        policy: WarmupPolicy,
        old: dict[str, Tensor],
        step: Tensor,
        beta: Tensor,
        stats: Statistics | None,
        units: Tensor,
        n_units: int,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the policy once per unit: sums add up, the unit is as young as its youngest tensor,
        as slow as its slowest (largest beta) and as unsure as its least warmed member."""

        def reduce(v: Tensor, how: str) -> Tensor:
            init = {"sum": 0.0, "amin": math.inf, "amax": -math.inf, "mean": 0.0}[how]
            out = torch.full((n_units,), init, dtype=v.dtype, device=v.device)
            return out.scatter_reduce(0, units, v, reduce=how, include_self=how == "sum")

        pooled_stats = None
        if stats is not None:
            pooled_stats = Statistics(
                sum_r=reduce(stats.sum_r * stats.valid, "sum"),
                sum_r2=reduce(stats.sum_r2 * stats.valid, "sum"),
                count=reduce(stats.count * stats.valid, "sum"),
                valid=reduce(stats.valid, "amax"),
            )
        how = {"confidence": "amin", "kurtosis": "mean", "evidence": "amin", "drift": "amax"}
        state = {k: reduce(old[k], how.get(k, "amin")) for k in policy.state_init}
        scale, new = policy.update(
            state,
            reduce(step, "amin"),
            reduce(beta, "amax"),
            pooled_stats,
            bias_corrected=self._algorithm.bias_corrected,
        )
        return scale[units], {k: v[units] for k, v in new.items()}

    # ------------------------------------------------------------------ observing

    @property
    def warmup_scale(self) -> list[Tensor]:
        """The current scale of every parameter, one 1-D float32 tensor per param group.

        Device tensors, read without a host sync (0 for parameters not stepped yet; 1 everywhere
        with ``warmup=None``). The effective learning rate of parameter ``j`` of group ``i`` is
        ``param_groups[i]['lr'] * warmup_scale[i][j]``.
        """
        out = []
        for group in self.param_groups:
            params = group["params"]
            if not params:
                out.append(torch.zeros(0))
                continue
            dev = params[0].device
            if self.warmup is None:
                out.append(torch.ones(len(params), device=dev))
                continue
            vals = [
                self.state[p][_PREFIX + "scale"]
                if _PREFIX + "scale" in self.state.get(p, {})
                else torch.zeros((), device=p.device)
                for p in params
            ]
            out.append(_stack_to(vals, dev))
        return out

    def warmup_stats(self) -> dict[str, float]:
        """:func:`warmopt.monitor.warmup_summary` as plain floats, for loggers. **Syncs with the
        device** (one copy of all values).

        The same keys as the summary: ``scale_min``, ``scale_median``, ``scale_max``,
        ``fraction_warmed`` (share of the stepped tensors at scale 1) and, for
        :class:`Measured`, ``kurtosis`` and ``drift`` (medians), over the tensors that have
        stepped at least once; the same per group under ``group{i}/``, plus
        ``group{i}/lr_effective`` (the group's ``lr`` times its median scale). Entries without
        any stepped tensor (before the first step, a group not stepped yet) are NaN.
        """
        from .monitor import warmup_summary

        summary = warmup_summary(self)
        values = torch.stack(list(summary.values())).cpu().tolist()
        return dict(zip(summary, values))


def _same(a: Any, b: Any) -> bool:
    """Whether an argument still holds its default (a tensor never does)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    return bool(a == b)


#: A group's lr counts as risen above ``before`` beyond ``before * _RISE`` (not float rounding).
_RISE = 1.0 + 1e-6


def _check_params(cls: type[WarmupOptimizer], params: Any) -> None:
    """warmopt.Adam/AdamW/RMSprop take parameters, as torch's classes; say what to use instead
    of handing them an optimizer (torch's own check would say it is not iterable)."""
    if isinstance(params, Optimizer) and not cls._wraps_optimizers:
        got = f"{type(params).__module__}.{type(params).__qualname__}"
        raise TypeError(
            f"warmopt.{cls.__name__} takes params (parameters or param groups, as "
            f"torch.optim.{cls.__name__}), not an optimizer (got a {got}); to add a warm-up "
            "to an existing torch.optim.Adam, AdamW or RMSprop, use "
            "warmopt.WarmupOptimizer(optimizer)"
        )


#: The torch classes WarmupOptimizer steps, by name (pickles store the name).
_BASES: dict[str, type[Optimizer]] = {cls.__name__: cls for cls in ALGORITHMS}

#: The flags each torch class's ``__setstate__`` fills in for state dicts saved before the flag
#: existed, with the default it fills in (AdamW: Adam's, then ``decoupled_weight_decay=True``).
_LOAD_DEFAULTS: dict[type[Optimizer], dict[str, Any]] = {
    Adam: {
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "decoupled_weight_decay": False,
        "fused": None,
    },
    RMSprop: {
        "momentum": 0,
        "centered": False,
        "foreach": None,
        "maximize": False,
        "differentiable": False,
        "capturable": False,
    },
}
_LOAD_DEFAULTS[AdamW] = _LOAD_DEFAULTS[Adam]


def _fill_in_as_torch(
    base: type[Optimizer], groups: list[dict[str, Any]], state: dict[Any, dict[str, Any]]
) -> None:
    """What ``base.__setstate__`` (torch's Adam, AdamW or RMSprop) does to a loaded state.

    Older state dicts lack flags added since (``maximize``, ``foreach``, ``capturable``,
    ``differentiable``, ``fused``, ``decoupled_weight_decay``): each group gets torch's default
    for them, and AdamW's groups ``decoupled_weight_decay=True``. A Python-number ``step``
    (older checkpoints) becomes the tensor torch makes of it: float32 (float64 under a float64
    default dtype, except fused), on the parameter's device when the group is capturable or
    fused, else on the CPU.
    """
    for group in groups:
        for key, default in _LOAD_DEFAULTS[base].items():
            group.setdefault(key, default)
        if base is AdamW:
            group["decoupled_weight_decay"] = True
        fused = group.get("fused")
        for p in group["params"]:
            st = state.get(p)
            if not st or "step" not in st or torch.is_tensor(st["step"]):
                continue
            step = float(st["step"])
            if group["capturable"] or fused:
                st["step"] = torch.tensor(
                    step, dtype=_get_scalar_dtype(is_fused=fused), device=p.device
                )
            else:
                st["step"] = torch.tensor(step, dtype=_get_scalar_dtype())


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


def _stat_calls(ts: list[Tensor]) -> list[tuple[list[int], bool]]:
    """How to measure one bucket (same device and dtype): ``(positions, stacked)`` per call of
    ``fresh_ratio_sums``. On the CPU tensors of at most ``STACK_MAX_NUMEL`` elements that share
    a shape with another are stacked (one call per shape, a kernel per pass rather than per
    tensor); everything else, and everything on accelerators (where a foreach op is already a
    few multi-tensor kernels), goes through one foreach call."""
    if not reads_on_host(ts[0]):
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


def _check_not_sparse(groups: Iterable[dict[str, Any]]) -> None:
    for group in groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(
                    "WarmupOptimizer does not support sparse gradients (parameter of shape "
                    f"{tuple(p.shape)}); use torch.optim.SparseAdam for sparse embeddings"
                )
