"""WarmupOptimizer: torch's Adam / AdamW / RMSprop step with a measured warm-up inside ``step()``.

Data path of one step (read top-down; each stage is one module, entered once):

1. **collect** (``_collect.py``): torch's own ``_init_group`` lists the tensors with a gradient
   and creates their state lazily, exactly as torch does; the warm-up keys (``warmup_scale``
   ...) are added after it and laid out as one vector per key. Once the host knows every scale
   is 1 (and the policy cannot fall) this is all: the step is torch's own.
2. **measure** (``_measure.py``, only for policies that read statistics): the fresh-ratio sums of
   every tensor against the *previous* second moment, as a :class:`~warmopt.policies.Statistics`.
3. **advance** (``_advance.py``): the policy, once for all tensors (or units), writes the new
   numbers into the state and returns the scales.
4. **apply** (``_apply.py``): the update at ``lr * scale`` per tensor, by the first path of one
   table that applies (warmopt's own foreach step, torch's single-tensor step at ``lr * s``,
   torch's fused kernel per tensor, or torch's update and a lerp back).

The scale never touches ``param_groups[i]['lr']``: LR schedulers own it, the warm-up multiplies it
inside the step. This module holds the rest: construction and wrapping, the four calls, and the
checkpoint plumbing.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Adam, Optimizer
from torch.optim.optimizer import ParamsT, _use_grad_for_differentiable

from ._advance import GRANULARITIES, advance
from ._algorithms import ALGORITHMS, Algorithm, fill_in_as_torch
from ._apply import apply
from ._collect import PREFIX, Book, collect, fit_warmup_state
from ._device import device_path_on_cpu, stack_to
from ._measure import Layouts, measure, measure_update
from ._stats import Statistics
from .policies import WarmupPolicy, resolve_policy

__all__ = ["WarmupOptimizer", "GRANULARITIES"]

_PREFIX = PREFIX


def _check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"Invalid granularity: {granularity!r} (expected one of {', '.join(GRANULARITIES)})"
        )
    return granularity


def _torch_defaults(base: type[Optimizer]) -> dict[str, Any]:
    """The constructor arguments of a torch class besides ``params``, with their defaults, read
    from torch's own signature (so warmopt writes each signature once, in its ``__init__``)."""
    if base not in _TORCH_DEFAULTS:
        _TORCH_DEFAULTS[base] = {
            name: p.default
            for name, p in inspect.signature(base.__init__).parameters.items()
            if name not in ("self", "params")
        }
    return _TORCH_DEFAULTS[base]


_TORCH_DEFAULTS: dict[type[Optimizer], dict[str, Any]] = {}


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
        >>> with torch.no_grad():  # small weights: a full-lr Adam step would move them by 3 %
        ...     _ = model.weight.fill_(0.01)
        >>> model(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()  # taken at the scale that moves the weight by 2 %; the bias follows it
        >>> [round(float(s), 3) for s in opt.warmup_scale[0]]
        [0.667, 0.667]
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
        self._build(Adam, params, locals())

    # ------------------------------------------------------------------ set-up

    def _build(self, base: type[Optimizer], params: Any, arguments: dict[str, Any]) -> None:
        """Build (or take) the torch optimizer from the ``locals()`` of a constructor with
        ``base``'s signature plus ``warmup`` and ``granularity``, then adopt it. The one place
        where torch's arguments are handled: by the names of torch's own signature."""
        _check_params(type(self), params)
        policy = resolve_policy(arguments["warmup"])
        granularity = _check_granularity(arguments["granularity"])
        defaults = _torch_defaults(base)
        given = {name: arguments[name] for name in defaults}
        if isinstance(params, Optimizer):
            changed = [k for k, v in given.items() if not _same(v, defaults[k])]
            if changed:
                raise TypeError(
                    "WarmupOptimizer(optimizer, ...) takes its hyperparameters from the wrapped "
                    f"optimizer; got {', '.join(changed)} as well. Set them on the optimizer."
                )
            self._adopt(params, policy, granularity)
        else:
            self._adopt(base(params, **given), policy, granularity)

    def _adopt(self, base: Optimizer, policy: WarmupPolicy | None, granularity: str) -> None:
        """Take over ``base``'s param groups, defaults and state (the same objects: torch's
        ``Optimizer.__init__`` keeps the group dicts and the defaults it is given; the list of
        groups and the state are then shared too, so either optimizer sees the other's
        ``add_param_group`` and state)."""
        algorithm = ALGORITHMS.get(type(base))
        if algorithm is None:
            raise TypeError(
                "WarmupOptimizer supports torch.optim.Adam, torch.optim.AdamW and "
                f"torch.optim.RMSprop instances, got {type(base).__module__}."
                f"{type(base).__qualname__}"
            )
        if policy is not None:
            for group in base.param_groups:
                algorithm.check_warmup_group(group)
        super().__init__(base.param_groups, base.defaults)
        self.param_groups, self.state = base.param_groups, base.state
        self._base_class: type[Optimizer] = type(base)
        self._algorithm: Algorithm = algorithm
        self._step_supports_amp_scaling = bool(getattr(base, "_step_supports_amp_scaling", False))
        self.warmup: WarmupPolicy | None = policy
        self.granularity = granularity
        self._book = Book()
        self._layouts = Layouts()
        self._cpu_is_host = not device_path_on_cpu()
        self._seen_lrs: list[float | None] = []
        self._lr_rise_warned = False

    @property
    def _warmup_done(self) -> bool:
        """Whether the host knows the warm-up is over: the step is torch's own, or (a policy that
        can fall) every scale was 1 on the last measured step and it now watches."""
        return self._book.done or self._book.interval > 1

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
        fill_in_as_torch(self._base_class, self.param_groups, self.state)
        self._seen_lrs = []  # the loaded lrs are not a rise
        self._lr_rise_warned = self.__dict__.get("_lr_rise_warned", False)
        self._book = Book()
        self._layouts = Layouts()
        self._cpu_is_host = not device_path_on_cpu()
        if name is not None:  # a copy or an unpickled optimizer: its state is its own policy's
            self._publish_done(self.state)

    @torch._disable_dynamo  # type: ignore[attr-defined]
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`torch.optim.Optimizer.load_state_dict`, keeping the warm-up numbers float32.

        torch casts every per-parameter state tensor except ``step`` to the parameter's dtype; a
        bfloat16 copy of a scale keeps 3 digits, so the ``warmup_*`` numbers are restored from the
        saved values in float32 (a policy's parameter-shaped buffer, such as RMSprop's
        ``warmup_grad_avg``, keeps float64 where it was saved so). A checkpoint without them
        (plain torch.optim.Adam) loads too: the warm-up state is then created on the next step
        and the policy restarts from the checkpoint's step count (see docs/warmup.md,
        "Resuming").

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
        self._book.reset()
        self._cpu_is_host = not device_path_on_cpu()
        try:
            super().load_state_dict(state_dict)
        finally:
            pre.remove()
            post.remove()
        self._seen_lrs = []

    def _restore_warmup_state(self, state_dict: dict[str, Any]) -> None:
        """Copy the saved ``warmup_*`` entries into the state as float32 (torch cast them; a
        policy buffer saved in float64 stays float64), then
        fit them to this optimizer's policy. Where the loaded step counts live on a device, the
        host takes its own count of them from the saved ones (read at load, not on a step)."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        policy = self.warmup
        buffers = set() if policy is None else {_PREFIX + k for k in policy.spec.buffers}
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            for key, value in saved.items():
                if isinstance(key, str) and key.startswith(_PREFIX) and isinstance(value, Tensor):
                    # the measure stage's buffers (RMSprop's warmup_grad_avg) are float64 for
                    # float64 parameters: a float32 copy would round them, and the resumed run
                    # would leave the uninterrupted one
                    keep = key in buffers and value.dtype == torch.float64
                    self.state[p][key] = value.detach().to(
                        dtype=torch.float64 if keep else torch.float32, device=p.device,
                        copy=True,
                    )  # fmt: skip
            step = self.state.get(p, {}).get("step")
            if isinstance(step, Tensor) and not (self._cpu_is_host and step.device.type == "cpu"):
                self._book.steps[p] = int(float(saved["step"]))
        # whether the saved run's warm-up was over, from the keys as saved (before the missing
        # ones are filled in: a checkpoint of another policy restarts from its step counts)
        if self.warmup is not None and self.warmup.state_init:
            saved_state = {p: state_dict["state"].get(i, {}) for i, p in zip(saved_ids, params)}
            self._publish_done(saved_state)
        fit_warmup_state(self.state, self.warmup)

    def _publish_done(self, saved: dict[Any, dict[str, Any]]) -> None:
        """Tell the host, as a step would, that the warm-up of a loaded or copied state was over.

        The run that saved it stopped measuring once every scale was 1 (its numbers stay as
        they were then); without this the loaded run would take one more warming step before it
        learned so, rewriting the policy's numbers (``warmup_update_ratio``, RMSprop's
        ``warmup_grad_avg``, ...) that the uninterrupted run keeps. Published as the device's
        flag (a non-blocking copy, no sync) where every parameter with state has all of this
        policy's keys in ``saved`` and every scale is 1, for a policy whose scale cannot fall.
        On load only for a policy with numbers of its own (``Measured``: its keys tell its
        checkpoints apart; a step-count policy has nothing to rewrite, and a checkpoint of
        another one must restart from the step counts).
        """
        policy = self.warmup
        if policy is None or policy.spec.can_fall:
            return
        names = [_PREFIX + k for k in ("scale", *policy.state_init)]
        scales = []
        for group in self.param_groups:
            for p in group["params"]:
                if not self.state.get(p):
                    continue  # never stepped: its first step makes state, and warms
                entries = saved.get(p, {})
                if not all(isinstance(entries.get(n), Tensor) for n in names):
                    return  # warm-up state to be made (or of another policy): the step decides
                scales.append(self.state[p][_PREFIX + "scale"])
        if scales:
            self._book.done_flag.publish((stack_to(scales, scales[0].device) >= 1.0).all())

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
        policy = self.warmup
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        # 1. collect: torch's _init_group, the lazy warm-up state (None once warm-up is over)
        got = collect(self, self._algorithm, policy, self._book, self._cpu_is_host, found_inf)
        if policy is not None and not self._lr_rise_warned:
            # after collect, which has just learned whether the warm-up ended in the last step
            self._check_lr_rise()
        scale = step = None
        warming = got.warming
        if policy is not None and warming is not None:
            spec = policy.spec
            stats = None
            if spec.statistics and warming.params:
                # 2. measure: the statistics of every tensor, one flat pass per device
                stats = Statistics()
                if spec.fresh_ratio:
                    stats = measure(
                        got.batches,
                        [self._algorithm.coupled_decay(g) for g in self.param_groups],
                        warming,
                        spec,
                        self._numbers(warming.params) if spec.every > 1 else [],
                        self._book.calls,
                        grad_scale,
                        found_inf,
                        self._layouts,
                    )
                if spec.update:
                    stats = stats.merged(
                        measure_update(
                            self._algorithm, self.param_groups, got.batches, warming,
                            spec.update_window, grad_scale, self.state, self._layouts,
                            spec.vectors_lead,
                        )
                    )  # fmt: skip
            if warming.params:
                self._book.calls += 1
            # 3. advance: the policy once for all tensors; the new numbers into the state
            scale = advance(
                policy, warming, stats, self.granularity, self._algorithm.bias_corrected,
                found_inf, self._book,
            )  # fmt: skip
            step = warming.step
        elif self._layouts:  # warm-up over: free the statistics' buffers
            self._layouts.clear()
        # 4. apply: the update at lr * scale (torch's own where scale is None)
        apply(
            self._algorithm, self.param_groups, got.batches, got.modes, scale, step,
            grad_scale, found_inf, self._cpu_is_host,
        )  # fmt: skip
        return loss

    def _numbers(self, params: list[Tensor]) -> list[int]:
        """Each of ``params``' position in ``param_groups`` order (the stagger of
        ``measure_every`` counts tensors so)."""
        number = {id(q): j for j, q in enumerate(q for g in self.param_groups for q in g["params"])}
        return [number[id(q)] for q in params]

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
            out.append(stack_to(vals, dev))
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


def _check_not_sparse(groups: Iterable[dict[str, Any]]) -> None:
    for group in groups:
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(
                    "WarmupOptimizer does not support sparse gradients (parameter of shape "
                    f"{tuple(p.shape)}); use torch.optim.SparseAdam for sparse embeddings"
                )
