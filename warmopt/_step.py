"""The update itself: torch's own Adam/RMSprop step, with the warm-up scale applied per tensor.

The base update is torch's functional ``adam``/``rmsprop`` called exactly the way
``torch.optim.Adam.step``/``RMSprop.step`` call it, so ``warmup=None`` follows torch bit for bit on
the same code path (single-tensor, foreach or fused). With a warm-up the step is

    p_new = base_step(p)                      # torch's update at the group's lr
    p     = lerp(p_new, p_old, 1 - s)         # = p_old + s * (p_new - p_old)

which equals torch's update at ``s * lr`` for every option these optimizers have: the moments do
not depend on lr, decoupled weight decay ``p (1 - lr wd)`` is linear in lr, and L2 weight decay,
momentum buffers, ``amsgrad`` and ``maximize`` enter the step only through terms that ``lr``
multiplies. ``s`` is a per-tensor 0-d device tensor, so the scale costs no host sync and no
recompile; ``p_old`` is a transient copy (per tensor in single-tensor mode, per bucket otherwise),
never a persistent buffer. The error is one rounding of ``p``: ``p_new - p_old`` is exact when the
step is small (Sterbenz), so ``s * (p_new - p_old)`` keeps full relative precision.

Most steps skip the copy and the lerp: Adam/AdamW in foreach mode (``scaled_adam_foreach``) and
RMSprop without momentum (``scaled_rmsprop_foreach``) run torch's foreach step themselves with a
per-tensor step size; fused mode calls torch's fused kernel once per tensor of at least
``FUSED_PER_TENSOR_MIN`` elements at its own ``lr * s`` (``scaled_adam_fused_each``); and
single-tensor mode on the CPU runs torch's own per-tensor update with ``lr * s`` as a host float
(``scaled_single``). On the CPU each is torch's step at ``lr * s`` bit for bit (see their
docstrings and docs/warmup.md, "Cost"). The copy and lerp remain where none of these applies:
the small tensors of fused mode, foreach Adam with amsgrad or GradScaler tensors, foreach
RMSprop with momentum, float16, a tensor ``lr``, ``capturable``/``differentiable``, and the
single-tensor path on accelerators (whose ``lr`` torch would read on the host).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Adam, AdamW, RMSprop
from torch.optim.adam import adam
from torch.optim.optimizer import Optimizer, _default_to_fused_or_foreach
from torch.optim.rmsprop import rmsprop

__all__ = [
    "Algorithm",
    "ALGORITHMS",
    "GroupBatch",
    "resolve_mode",
    "run_group",
    "scaled_adam_ok",
    "scaled_adam_foreach",
    "fused_large",
    "scaled_adam_fused_each",
    "scaled_rmsprop_ok",
    "scaled_rmsprop_foreach",
]


@dataclass
class GroupBatch:
    """The tensors of one param group that have a gradient this step, as torch's step lists them."""

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    # Adam: exp_avgs, exp_avg_sqs, max_exp_avg_sqs; RMSprop: square_avgs, grad_avgs, momentum.
    buffers: dict[str, list[Tensor]] = field(default_factory=dict)
    state_steps: list[Tensor] = field(default_factory=list)
    has_complex: bool = False

    @property
    def second_moments(self) -> list[Tensor]:
        return (
            self.buffers["exp_avg_sqs"]
            if "exp_avg_sqs" in self.buffers
            else self.buffers["square_avgs"]
        )

    def subset(self, i: int) -> GroupBatch:
        """The batch of tensor ``i`` alone (single-tensor mode)."""
        return self.select([i])

    def select(self, idx: list[int]) -> GroupBatch:
        """The batch of tensors ``idx`` (buffer lists that are empty, e.g. no amsgrad, stay so)."""
        return GroupBatch(
            params=[self.params[i] for i in idx],
            grads=[self.grads[i] for i in idx],
            buffers={k: [v[i] for i in idx] if v else [] for k, v in self.buffers.items()},
            state_steps=[self.state_steps[i] for i in idx],
            has_complex=self.has_complex and any(torch.is_complex(self.params[i]) for i in idx),
        )


class Algorithm:
    """How to list a group's tensors and run torch's update for one base optimizer class."""

    name: str
    base_class: type[Optimizer]
    #: key of the second-moment decay in a param group, and how to read it.
    bias_corrected: bool

    def beta(self, group: dict[str, Any]) -> float | Tensor:
        raise NotImplementedError

    def coupled_decay(self, group: dict[str, Any]) -> float:
        """``c`` such that the gradient torch feeds to the second moment is ``±(g + c p)``.

        Coupled (L2) weight decay adds ``weight_decay * p`` to the gradient after ``maximize``
        negates it, so ``c = -weight_decay`` under ``maximize`` (the sign of the sum does not
        matter for its square). 0 for decoupled (AdamW) decay, which never touches the moments.
        """
        if group.get("decoupled_weight_decay", False):
            return 0.0
        wd = float(group.get("weight_decay", 0.0))
        return -wd if group.get("maximize", False) else wd

    def init_group(self, opt: Optimizer, group: dict[str, Any]) -> GroupBatch:
        raise NotImplementedError

    def update(
        self,
        group: dict[str, Any],
        batch: GroupBatch,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> None:
        raise NotImplementedError


class _AdamAlgorithm(Algorithm):
    name = "adam"
    base_class = Adam
    bias_corrected = True

    def beta(self, group: dict[str, Any]) -> float | Tensor:
        return group["betas"][1]  # type: ignore[no-any-return]

    def init_group(self, opt: Optimizer, group: dict[str, Any]) -> GroupBatch:
        b = GroupBatch(
            buffers={"exp_avgs": [], "exp_avg_sqs": [], "max_exp_avg_sqs": []},
        )
        # torch's own lazy state initialisation (step placement, amsgrad buffer, checks).
        b.has_complex = Adam._init_group(  # type: ignore[no-untyped-call]
            opt,  # type: ignore[arg-type]
            group,
            b.params,
            b.grads,
            b.buffers["exp_avgs"],
            b.buffers["exp_avg_sqs"],
            b.buffers["max_exp_avg_sqs"],
            b.state_steps,
        )
        return b

    def update(self, group, batch, grad_scale, found_inf):  # type: ignore[no-untyped-def]
        beta1, beta2 = group["betas"]
        adam(
            batch.params,
            batch.grads,
            batch.buffers["exp_avgs"],
            batch.buffers["exp_avg_sqs"],
            batch.buffers["max_exp_avg_sqs"],
            batch.state_steps,
            amsgrad=group["amsgrad"],
            has_complex=batch.has_complex,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            foreach=group["foreach"],
            capturable=group["capturable"],
            differentiable=group["differentiable"],
            fused=group["fused"],
            grad_scale=grad_scale,
            found_inf=found_inf,
            decoupled_weight_decay=group["decoupled_weight_decay"],
        )


class _RMSpropAlgorithm(Algorithm):
    name = "rmsprop"
    base_class = RMSprop
    bias_corrected = False

    def beta(self, group: dict[str, Any]) -> float | Tensor:
        return group["alpha"]  # type: ignore[no-any-return]

    def init_group(self, opt: Optimizer, group: dict[str, Any]) -> GroupBatch:
        b = GroupBatch(buffers={"square_avgs": [], "momentum_buffer_list": [], "grad_avgs": []})
        b.has_complex = RMSprop._init_group(  # type: ignore[no-untyped-call]
            opt,  # type: ignore[arg-type]
            group,
            b.params,
            b.grads,
            b.buffers["square_avgs"],
            b.buffers["momentum_buffer_list"],
            b.buffers["grad_avgs"],
            b.state_steps,
        )
        return b

    def update(self, group, batch, grad_scale, found_inf):  # type: ignore[no-untyped-def]
        if grad_scale is not None or found_inf is not None:
            raise RuntimeError("RMSprop does not take grad_scale/found_inf")
        rmsprop(
            batch.params,
            batch.grads,
            batch.buffers["square_avgs"],
            batch.buffers["grad_avgs"],
            batch.buffers["momentum_buffer_list"],
            batch.state_steps,
            lr=group["lr"],
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            centered=group["centered"],
            foreach=group["foreach"],
            maximize=group["maximize"],
            differentiable=group["differentiable"],
            capturable=group["capturable"],
            has_complex=batch.has_complex,
        )


ADAM = _AdamAlgorithm()
RMSPROP = _RMSpropAlgorithm()
#: The torch classes WarmupOptimizer can wrap, exact types only (a subclass may change the step).
ALGORITHMS: dict[type[Optimizer], Algorithm] = {Adam: ADAM, AdamW: ADAM, RMSprop: RMSPROP}


def resolve_mode(group: dict[str, Any], params: list[Tensor]) -> str:
    """Which of torch's code paths the base update takes: ``fused``, ``foreach`` or ``single``.

    Mirrors the choice inside ``torch.optim.adam``/``rmsprop``: an explicit flag wins; with both
    unset, foreach on supported devices, except for a tensor ``lr`` without ``capturable``.
    """
    if group.get("fused"):
        return "fused"
    foreach = group.get("foreach")
    if foreach is None:
        if not params:
            return "single"
        _, foreach = _default_to_fused_or_foreach(params, group["differentiable"], use_fused=False)
        if foreach and isinstance(group["lr"], Tensor) and not group["capturable"]:
            foreach = False
    return "foreach" if foreach else "single"


def split_to(vector: Tensor, like: list[Tensor]) -> list[Tensor]:
    """The entries of ``vector`` as 0-d tensors on the devices of ``like`` (same order)."""
    devices = {t.device for t in like}
    if len(devices) == 1:
        (dev,) = devices
        return list(vector.to(dev, non_blocking=True).unbind(0))
    out: list[Tensor] = [vector] * len(like)
    for dev in devices:
        idx = [i for i, t in enumerate(like) if t.device == dev]
        part = vector[torch.tensor(idx, device=vector.device)].to(dev, non_blocking=True)
        for i, t in zip(idx, part.unbind(0)):
            out[i] = t
    return out


def _real(ts: list[Tensor], has_complex: bool = True) -> list[Tensor]:
    """Real views of complex tensors; with ``has_complex=False`` (known from ``_init_group``) the
    tensors as they are, without a check per tensor."""
    if not has_complex:
        return list(ts)
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in ts]


def reads_on_host(t: Tensor) -> bool:
    """Whether per-tensor numbers held in ``t`` are read on the host (free on the CPU; tests turn
    ``HOST_SCALARS_ON_CPU`` off to run the accelerator paths there)."""
    return HOST_SCALARS_ON_CPU and t.device.type == "cpu"


def run_group(
    algorithm: Algorithm,
    group: dict[str, Any],
    batch: GroupBatch,
    mode: str,
    keep: list[Tensor] | None,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """Run torch's update on one group; with ``keep`` (``1 - s`` per tensor) apply the scale.

    ``keep[i]`` is a 0-d tensor on tensor ``i``'s device: the fraction of the step that is *not*
    taken. ``keep=None`` is torch's step, untouched.
    """
    if not batch.params:
        return
    if keep is None:
        algorithm.update(group, batch, grad_scale, found_inf)
        return
    if mode == "single":
        # torch's single-tensor path is a loop over tensors; running it one tensor at a time gives
        # the same numbers and keeps the transient copy to one tensor.
        for i, p in enumerate(batch.params):
            before = p.clone()
            algorithm.update(group, batch.subset(i), grad_scale, found_inf)
            _real([p])[0].lerp_(_real([before])[0], keep[i])
        return
    # The step runs under no_grad (or with autograd on, for differentiable=True, as torch's does),
    # so the parameters are updated in place without detach().
    params = batch.params
    old = list(torch._foreach_mul(params, 1.0))
    algorithm.update(group, batch, grad_scale, found_inf)
    # 0-d tensor weights broadcast, like capturable Adam's per-tensor step sizes
    torch._foreach_lerp_(_real(params, batch.has_complex), _real(old, batch.has_complex), keep)


# ---------------------------------------------------------------- foreach Adam at lr * s, no copy

#: Dtypes whose range is float32's or wider: ``(sqrt(v) / sqrt(b2) + eps) / |sigma|`` cannot
#: overflow unless the step it divides is negligible (float16 can: its max is 65504).
_FOLD_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _own_foreach_ok(group: dict[str, Any], batch: GroupBatch, mode: str) -> bool:
    """What warmopt's own foreach steps (Adam and RMSprop) need: foreach mode, a float ``lr``, no
    ``differentiable``/``capturable``, float32/float64/bfloat16 tensors (complex ones as their real
    views)."""
    return (
        mode == "foreach"
        and not group["differentiable"]
        and not group["capturable"]
        and not isinstance(group["lr"], Tensor)
        and all(p.dtype in _FOLD_DTYPES for p in _real(batch.params, batch.has_complex))
    )


def _moment_grads(
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    steps: list[Tensor],
    l2: float,
) -> list[Tensor]:
    """The opening of torch's foreach Adam and RMSprop steps, shared by warmopt's copies of them:
    negate the gradients under ``maximize``, increment the step counts, add ``l2 * p`` for
    coupled (L2) weight decay. Returns the gradients the moments are built from."""
    if group["maximize"]:
        grads = list(torch._foreach_neg(grads))
    torch._foreach_add_(steps, 1.0)
    if l2 != 0:
        grads = list(torch._foreach_add(grads, params, alpha=l2))
    return grads


def scaled_adam_ok(
    algorithm: Algorithm,
    group: dict[str, Any],
    batch: GroupBatch,
    mode: str,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> bool:
    """Whether ``scaled_adam_foreach`` can run this group's warming step (else snapshot + lerp).

    Adam/AdamW in foreach mode with float ``lr`` and betas, no ``amsgrad``, ``differentiable`` or
    ``capturable``, no GradScaler tensors (torch's foreach Adam takes none), on
    float32/float64/bfloat16 tensors (complex ones as their real views).
    """
    return (
        algorithm is ADAM
        and not group["amsgrad"]
        and grad_scale is None
        and found_inf is None
        and not any(isinstance(b, Tensor) for b in group["betas"])
        and _own_foreach_ok(group, batch, mode)
    )


#: Read per-tensor numbers on the host when they live on the CPU (free there): host scalars in
#: the foreach steps, window views for the sampled statistics. Tests switch it off to run the
#: accelerator paths (0-d device divisors, gathered windows) on the CPU.
HOST_SCALARS_ON_CPU = True


def _device_factors(
    group: dict[str, Any], scale: Tensor, step: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-tensor factors of Adam's step at ``lr * scale`` as device tensors (no host read).

    With :math:`\sigma = -\mathrm{lr}\,s/(1-\beta_1^t)` torch's step is
    :math:`p \mathrel{+}= \sigma\, m / (\sqrt v/\sqrt{b_2} + \epsilon)`, which is
    ``addcdiv(p, m, sqrt(v) / A + B)`` with :math:`A = \sqrt{b_2}\,\sigma` and
    :math:`B = \epsilon/\sigma`: the same four passes over ``v`` as torch's step, with the scale
    riding in the 0-d divisors (torch's capturable Adam divides by its step size the same way).
    Where :math:`\sigma` is 0 (or ``A`` underflows) ``A = B = inf`` makes the denominator inf and
    the step exactly 0 instead of 0/0. The third factor is decoupled weight decay's
    :math:`1 - \mathrm{lr}\,s\,\mathrm{wd}`. 1-D float32 on ``scale``'s device.
    """
    beta1, beta2 = group["betas"]
    lr = float(group["lr"])  # a tensor lr never takes this path (_own_foreach_ok)
    s = scale.double()
    sigma = -lr * s / (1 - float(beta1) ** step)
    div = (torch.sqrt(1 - float(beta2) ** step) * sigma).float()
    add = (float(group["eps"]) / sigma).float()
    zero = (div == 0) | (sigma == 0)
    inf = torch.full_like(div, math.inf)
    div, add = torch.where(zero, inf, div), torch.where(zero, inf, add)
    decay = (1 - lr * s * float(group["weight_decay"])).float()
    return div, add, decay


def scaled_adam_foreach(
    group: dict[str, Any], batch: GroupBatch, scale: Tensor, step: Tensor
) -> None:
    """torch's foreach Adam/AdamW step at ``lr * s`` per tensor, with no parameter copy.

    ``scale`` and ``step`` (the step counts after this step's increment) hold one entry per
    tensor of ``batch``, on one device. The ops are those of ``torch.optim.adam._multi_tensor_adam``
    (foreach, not capturable), in the same order:

    * scales on the CPU: the same host scalars too, built the way torch builds them, with
      ``lr * s`` for ``lr`` (reading a CPU tensor is no device sync). This is torch's step at
      ``lr * s`` bit for bit, and torch's own step at ``s = 1``.
    * scales on a device: the per-tensor step size enters as 0-d device divisors
      (``_device_factors``), so nothing is read on the host; equal to torch's step up to the
      rounding of those factors.

    Either way there is no snapshot + lerp (about 20 bytes per parameter on the fallback path)
    and no extra pass.
    """
    beta1, beta2 = (float(b) for b in group["betas"])
    wd = float(group["weight_decay"])
    eps = float(group["eps"])
    decoupled = bool(group["decoupled_weight_decay"])
    host = reads_on_host(scale)
    # The denominator is sqrt(v) / divisor[i] + addend[i]; the step is addcdiv with value[i].
    divisor: list[Any]
    addend: list[Any] = []
    value: list[float] = []
    decay: list[Any]
    if host:
        lr = float(group["lr"])
        s_host, t_host = scale.tolist(), step.tolist()
        value = [(lr * s / (1 - beta1**t)) * -1 for s, t in zip(s_host, t_host)]
        divisor = [(1 - beta2**t) ** 0.5 for t in t_host]  # torch's bias_correction2_sqrt
        decay = [1 - lr * s * wd for s in s_host]
    else:  # A and B of _device_factors, the value folded into them
        div_v, add_v, decay_v = _device_factors(group, scale, step)
        divisor, addend = split_to(div_v, batch.params), split_to(add_v, batch.params)
        decay = split_to(decay_v, batch.params) if decoupled and wd != 0 else []
    lists: list[list[Tensor | None]] = [
        list(batch.params),
        list(batch.grads),
        list(batch.buffers["exp_avgs"]),
        list(batch.buffers["exp_avg_sqs"]),
        list(batch.state_steps),
    ]
    grouped = Optimizer._group_tensors_by_device_and_dtype(lists, with_indices=True)
    for bucket, idx in grouped.values():
        params, grads, exp_avgs, exp_avg_sqs = (
            _real(cast(list[Tensor], t), batch.has_complex) for t in bucket[:4]
        )
        steps = cast(list[Tensor], bucket[4])
        grads = _moment_grads(group, params, grads, steps, 0.0 if decoupled else wd)
        if decoupled and wd != 0:
            torch._foreach_mul_(params, [decay[i] for i in idx])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        del grads
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [divisor[i] for i in idx])
        if host:
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denom, [value[i] for i in idx])
        else:
            torch._foreach_add_(denom, [addend[i] for i in idx])
            torch._foreach_addcdiv_(params, exp_avgs, denom)


# ------------------------------------------------ fused Adam at lr * s: one call per large tensor

#: Fused mode: tensors with at least this many elements are stepped by one fused call each at their
#: own ``lr * s`` (no copy, no lerp); smaller ones share one call and the snapshot + lerp.
FUSED_PER_TENSOR_MIN = 1 << 16


def fused_large(
    algorithm: Algorithm, group: dict[str, Any], batch: GroupBatch, mode: str
) -> list[int]:
    """Indices of the tensors that ``scaled_adam_fused_each`` steps (empty if none can be)."""
    if algorithm is not ADAM or mode != "fused" or isinstance(group["lr"], Tensor):
        return []
    return [
        i
        for i, p in enumerate(batch.params)
        if p.numel() >= FUSED_PER_TENSOR_MIN and not (batch.has_complex and torch.is_complex(p))
    ]


def scaled_adam_fused_each(
    group: dict[str, Any],
    batch: GroupBatch,
    scale: Tensor,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """torch's fused Adam/AdamW kernel once per tensor, each at its own ``lr * s``.

    What ``torch.optim.adam._fused_adam`` does for a list, for one tensor at a time: increment
    ``step``, run ``_fused_adam_``/``_fused_adamw_`` (unscaling by ``grad_scale`` and skipping on
    ``found_inf`` inside the kernel), and take the increment back where ``found_inf``. With the
    scales on the CPU ``lr * s`` is a host float, so this is torch's fused step at ``lr * s`` bit
    for bit; on an accelerator it is a 0-d device tensor (the kernel's ``tensor_lr`` overload; no
    host read). One kernel per tensor: meant for tensors large enough
    (``FUSED_PER_TENSOR_MIN``) that a kernel per tensor costs less than the copy and lerp.
    """
    beta1, beta2 = group["betas"]
    lr = float(group["lr"])
    lrs: list[Any]
    if reads_on_host(scale):
        lrs = [lr * s for s in scale.tolist()]
    else:
        lrs = split_to((lr * scale.double()).float(), batch.params)
    func = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    on_device: dict[torch.device, tuple[Tensor | None, Tensor | None]] = {}
    amsgrad = bool(group["amsgrad"])
    torch._foreach_add_(batch.state_steps, 1)
    for i, p in enumerate(batch.params):
        dev = p.device
        if dev not in on_device:
            on_device[dev] = (
                None if grad_scale is None else grad_scale.to(dev, non_blocking=True),
                None if found_inf is None else found_inf.to(dev, non_blocking=True),
            )
        gs, fi = on_device[dev]
        step = batch.state_steps[i]
        func(
            [p],
            [batch.grads[i]],
            [batch.buffers["exp_avgs"][i]],
            [batch.buffers["exp_avg_sqs"][i]],
            [batch.buffers["max_exp_avg_sqs"][i]] if amsgrad else [],
            [step],
            amsgrad=amsgrad,
            lr=lrs[i],
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=float(group["weight_decay"]),
            eps=float(group["eps"]),
            maximize=bool(group["maximize"]),
            grad_scale=gs,
            found_inf=fi,
        )
    if found_inf is not None:
        # take the increment back where the step was skipped (found_inf on each tensor's device)
        skipped = {dev: fi for dev, (_, fi) in on_device.items() if fi is not None}
        torch._foreach_sub_(batch.state_steps, [skipped[s.device] for s in batch.state_steps])


# ------------------------------------------------- single-tensor steps at lr * s, no copy


def scaled_single_ok(group: dict[str, Any], mode: str, scale: Tensor) -> bool:
    """Whether ``scaled_single`` can run this group: torch's single-tensor path (a loop over the
    tensors) with a float ``lr`` and the scales readable on the host (CPU), not capturable or
    differentiable (whose updates keep tensors and autograd history)."""
    return (
        mode == "single"
        and reads_on_host(scale)
        and not isinstance(group["lr"], Tensor)
        and not group.get("capturable", False)
        and not group.get("differentiable", False)
    )


def scaled_single(
    algorithm: Algorithm,
    group: dict[str, Any],
    batch: GroupBatch,
    scale: Tensor,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
) -> None:
    """torch's single-tensor update, one tensor at a time, each with the group's ``lr`` set to
    ``lr * s`` (a host float): torch's own step at that lr, bit for bit, for every option of
    Adam, AdamW and RMSprop, with no snapshot and no lerp. torch's single-tensor path is itself
    a Python loop over the tensors, so this adds no op per tensor."""
    lr = float(group["lr"])
    for i, s in enumerate(scale.tolist()):
        algorithm.update({**group, "lr": lr * s}, batch.subset(i), grad_scale, found_inf)


# ------------------------------------------------------- foreach RMSprop at lr * s, no copy


def scaled_rmsprop_ok(
    algorithm: Algorithm, group: dict[str, Any], batch: GroupBatch, mode: str
) -> bool:
    """Whether ``scaled_rmsprop_foreach`` can run this group's warming step (else snapshot + lerp).

    RMSprop in foreach mode without momentum (torch applies a momentum buffer with a single
    ``alpha``, which has no per-tensor form), ``capturable``, ``differentiable`` or a tensor
    ``lr``, on float32/float64/bfloat16 tensors (complex ones as their real views).
    """
    return algorithm is RMSPROP and group["momentum"] == 0 and _own_foreach_ok(group, batch, mode)


def scaled_rmsprop_foreach(group: dict[str, Any], batch: GroupBatch, scale: Tensor) -> None:
    """torch's foreach RMSprop step (no momentum) at ``lr * s`` per tensor, with no parameter copy.

    The ops of ``torch.optim.rmsprop._multi_tensor_rmsprop`` in the same order, the last one
    ``addcdiv(p, g, avg, value=-lr)`` with a per-tensor value: on the CPU the host scalars
    ``-lr * s`` (torch's step at ``lr * s`` bit for bit), elsewhere ``avg`` divided by the 0-d
    device tensors ``-lr * s`` first (torch's capturable RMSprop divides by ``-lr`` the same way;
    at ``s = 0`` that is ``avg / -0 = -inf``, a step of exactly 0, since ``avg >= eps > 0``).
    """
    alpha, eps, wd = float(group["alpha"]), float(group["eps"]), float(group["weight_decay"])
    lr = float(group["lr"])
    host = reads_on_host(scale)
    host_values: list[float] = []
    device_values: list[Tensor] = []
    if host:
        host_values = [-lr * s for s in scale.tolist()]
    else:
        device_values = split_to((-lr * scale.double()).float(), batch.params)
    lists: list[list[Tensor | None]] = [
        list(batch.params),
        list(batch.grads),
        list(batch.buffers["square_avgs"]),
        list(batch.buffers["grad_avgs"]) if group["centered"] else [None] * len(batch.params),
        list(batch.state_steps),
    ]
    grouped = Optimizer._group_tensors_by_device_and_dtype(lists, with_indices=True)
    for bucket, idx in grouped.values():
        params, grads, square_avgs = (
            _real(cast(list[Tensor], t), batch.has_complex) for t in bucket[:3]
        )
        steps = cast(list[Tensor], bucket[4])
        grads = _moment_grads(group, params, grads, steps, wd)
        torch._foreach_mul_(square_avgs, alpha)
        torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
        if group["centered"]:
            grad_avgs = _real(cast(list[Tensor], bucket[3]), batch.has_complex)
            torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
            avg = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
            torch._foreach_sqrt_(avg)
        else:
            avg = torch._foreach_sqrt(square_avgs)
        torch._foreach_add_(avg, eps)
        if host:
            torch._foreach_addcdiv_(params, grads, avg, [host_values[i] for i in idx])
        else:
            torch._foreach_div_(avg, [device_values[i] for i in idx])
            torch._foreach_addcdiv_(params, grads, avg)
