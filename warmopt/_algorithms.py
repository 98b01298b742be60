"""The torch side: what differs between Adam/AdamW and RMSprop, in one object per algorithm.

An :class:`Algorithm` knows how torch lists a group's tensors (its ``_init_group``), how torch
runs the update (its functional ``adam``/``rmsprop``, called exactly as
``torch.optim.Adam.step``/``RMSprop.step`` call it, so ``warmup=None`` follows torch bit for bit on
the same code path), which number is the second-moment decay, whether the second moment is
bias-corrected, and which fast scaled steps it has:

* ``scaled_foreach``: warmopt's own copy of torch's foreach step with a per-tensor step size
  ``lr * s`` (Adam/AdamW: ``_multi_tensor_adam``; RMSprop without momentum:
  ``_multi_tensor_rmsprop``), where ``scaled_foreach_supports`` says it applies;
* ``fused_each``: torch's fused kernel once per tensor at its own ``lr * s`` (Adam/AdamW only).

The apply stage (``_apply.py``) chooses among these and the generic paths from one table; it never
asks which algorithm it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Adam, AdamW, RMSprop
from torch.optim.adam import adam
from torch.optim.optimizer import Optimizer, _default_to_fused_or_foreach, _get_scalar_dtype
from torch.optim.rmsprop import rmsprop

from . import _stats
from ._device import split_to

__all__ = [
    "Algorithm", "ALGORITHMS", "GroupBatch", "resolve_mode", "real_views", "fill_in_as_torch",
]  # fmt: skip


@dataclass
class GroupBatch:
    """The tensors of one param group that have a gradient this step, as torch's step lists them."""

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    # Adam: exp_avgs, exp_avg_sqs, max_exp_avg_sqs; RMSprop: square_avgs, grad_avgs, momentum.
    buffers: dict[str, list[Tensor]] = field(default_factory=dict)
    state_steps: list[Tensor] = field(default_factory=list)
    has_complex: bool = False
    #: key of the second moment in ``buffers`` (``exp_avg_sqs`` or ``square_avgs``)
    second_moment_key: str = "exp_avg_sqs"

    @property
    def second_moments(self) -> list[Tensor]:
        return self.buffers[self.second_moment_key]

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
            second_moment_key=self.second_moment_key,
        )


def real_views(ts: list[Tensor], has_complex: bool = True) -> list[Tensor]:
    """Real views of complex tensors; with ``has_complex=False`` (known from ``_init_group``) the
    tensors as they are, without a check per tensor."""
    if not has_complex:
        return list(ts)
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in ts]


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


#: Dtypes whose range is float32's or wider: ``(sqrt(v) / sqrt(b2) + eps) / |sigma|`` cannot
#: overflow unless the step it divides is negligible (float16 can: its max is 65504).
_FOLD_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def own_foreach_ok(group: dict[str, Any], batch: GroupBatch, mode: str) -> bool:
    """What warmopt's own foreach steps (Adam and RMSprop) need: foreach mode, a float ``lr``, no
    ``differentiable``/``capturable``, float32/float64/bfloat16 tensors (complex ones as their real
    views)."""
    return (
        mode == "foreach"
        and not group["differentiable"]
        and not group["capturable"]
        and not isinstance(group["lr"], Tensor)
        and all(p.dtype in _FOLD_DTYPES for p in real_views(batch.params, batch.has_complex))
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


class Algorithm:
    """How to list a group's tensors and run torch's update for one base optimizer class."""

    name: str
    base_class: type[Optimizer]
    #: whether the second moment is bias-corrected (Adam: yes; RMSprop's square_avg: no)
    bias_corrected: bool
    #: whether torch's fused kernel can step one tensor at its own ``lr * s`` (``fused_each``)
    has_fused_each: bool = False

    def beta(self, group: dict[str, Any]) -> float | Tensor:
        """The second-moment decay of a param group."""
        raise NotImplementedError

    def check_warmup_group(self, group: dict[str, Any]) -> None:
        """Reject a param group the warm-up cannot handle (torch has checked the rest)."""

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
        """torch's own ``_init_group``: the tensors with a gradient, lazy state included."""
        raise NotImplementedError

    def update(
        self,
        group: dict[str, Any],
        batch: GroupBatch,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> None:
        """torch's functional update, called as the torch class's ``step`` calls it."""
        raise NotImplementedError

    def scaled_foreach_supports(
        self, group: dict[str, Any], grad_scale: Tensor | None, found_inf: Tensor | None
    ) -> bool:
        """Whether ``scaled_foreach`` can step this group (beyond ``own_foreach_ok``)."""
        return False

    def update_sources(self, group: dict[str, Any], batch: GroupBatch) -> dict[str, list[Tensor]]:
        """The state tensors the update at unit lr is computed from (besides the gradient and
        the parameters), by the names :meth:`unit_update` reads, as real views."""
        raise NotImplementedError

    def needs_grad_average(self, group: dict[str, Any]) -> bool:
        """Whether the measure stage keeps a running average of the gradients for this group
        (``warmup_grad_avg``): the part of the step that keeps its direction, where the
        algorithm keeps none of its own."""
        return False

    def unit_update(
        self, group: dict[str, Any], g: Tensor, src: dict[str, Tensor], rows: dict[str, Tensor]
    ) -> Tensor:
        """The update torch is about to apply, at unit lr, for ``[rows, BLOCK]`` scratch copies
        ``src`` of :meth:`update_sources` and the gradient ``g`` the moments are built from;
        ``rows`` holds per-row factors (``bias1``, ``bias2``, ``avg_bias``, ``[rows, 1]``)."""
        raise NotImplementedError

    def scaled_foreach(
        self, group: dict[str, Any], batch: GroupBatch, scale: Tensor, step: Tensor, host: bool
    ) -> None:
        """torch's foreach step at ``lr * s`` per tensor, with no parameter copy."""
        raise NotImplementedError

    def fused_each(
        self,
        group: dict[str, Any],
        batch: GroupBatch,
        scale: Tensor,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        host: bool,
    ) -> None:
        """torch's fused kernel once per tensor, each at its own ``lr * s``."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------- Adam


class _AdamAlgorithm(Algorithm):
    name = "adam"
    base_class = Adam
    bias_corrected = True
    has_fused_each = True

    def beta(self, group: dict[str, Any]) -> float | Tensor:
        return group["betas"][1]  # type: ignore[no-any-return]

    def update_sources(self, group: dict[str, Any], batch: GroupBatch) -> dict[str, list[Tensor]]:
        out = {
            "m": real_views(batch.buffers["exp_avgs"], batch.has_complex),
            "v": real_views(batch.buffers["exp_avg_sqs"], batch.has_complex),
        }
        if group["amsgrad"]:
            out["vmax"] = real_views(batch.buffers["max_exp_avg_sqs"], batch.has_complex)
        return out

    def unit_update(
        self, group: dict[str, Any], g: Tensor, src: dict[str, Tensor], rows: dict[str, Tensor]
    ) -> Tensor:
        beta1, beta2 = (float(b) for b in group["betas"])
        return _stats.adam_update_(
            g, src["m"], src["v"], beta1=beta1, beta2=beta2, eps=float(group["eps"]),
            bias1=rows["bias1"], bias2=rows["bias2"], vmax=src.get("vmax"),
        )  # fmt: skip

    def init_group(self, opt: Optimizer, group: dict[str, Any]) -> GroupBatch:
        b = GroupBatch(
            buffers={"exp_avgs": [], "exp_avg_sqs": [], "max_exp_avg_sqs": []},
            second_moment_key="exp_avg_sqs",
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

    def update(
        self,
        group: dict[str, Any],
        batch: GroupBatch,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> None:
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

    def scaled_foreach_supports(
        self, group: dict[str, Any], grad_scale: Tensor | None, found_inf: Tensor | None
    ) -> bool:
        """Adam/AdamW with float betas, no ``amsgrad`` and no GradScaler tensors (torch's foreach
        Adam takes none)."""
        return (
            not group["amsgrad"]
            and grad_scale is None
            and found_inf is None
            and not any(isinstance(b, Tensor) for b in group["betas"])
        )

    def scaled_foreach(
        self, group: dict[str, Any], batch: GroupBatch, scale: Tensor, step: Tensor, host: bool
    ) -> None:
        """torch's foreach Adam/AdamW step at ``lr * s`` per tensor, with no parameter copy.

        ``scale`` and ``step`` (the step counts after this step's increment) hold one entry per
        tensor of ``batch``, on one device. The ops are those of
        ``torch.optim.adam._multi_tensor_adam`` (foreach, not capturable), in the same order:

        * ``host`` (scales on the CPU): the same host scalars too, built the way torch builds
          them, with ``lr * s`` for ``lr`` (reading a CPU tensor is no device sync). This is
          torch's step at ``lr * s`` bit for bit, and torch's own step at ``s = 1``.
        * otherwise: the per-tensor step size enters as 0-d device divisors
          (``_device_factors``), so nothing is read on the host; equal to torch's step up to the
          rounding of those factors.

        Either way there is no snapshot + lerp (about 20 bytes per parameter on the fallback
        path) and no extra pass.
        """
        beta1, beta2 = (float(b) for b in group["betas"])
        wd = float(group["weight_decay"])
        eps = float(group["eps"])
        decoupled = bool(group["decoupled_weight_decay"])
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
                real_views(cast(list[Tensor], t), batch.has_complex) for t in bucket[:4]
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

    def fused_each(
        self,
        group: dict[str, Any],
        batch: GroupBatch,
        scale: Tensor,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        host: bool,
    ) -> None:
        """torch's fused Adam/AdamW kernel once per tensor, each at its own ``lr * s``.

        What ``torch.optim.adam._fused_adam`` does for a list, for one tensor at a time:
        increment ``step``, run ``_fused_adam_``/``_fused_adamw_`` (unscaling by ``grad_scale``
        and skipping on ``found_inf`` inside the kernel), and take the increment back where
        ``found_inf``. With ``host`` (scales on the CPU) ``lr * s`` is a host float, so this is
        torch's fused step at ``lr * s`` bit for bit; otherwise it is a 0-d device tensor (the
        kernel's ``tensor_lr`` overload; no host read).
        """
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        lrs: list[Any]
        if host:
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
            # take the increment back where the step was skipped (found_inf on each device)
            skipped = {dev: fi for dev, (_, fi) in on_device.items() if fi is not None}
            torch._foreach_sub_(batch.state_steps, [skipped[s.device] for s in batch.state_steps])


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
    lr = float(group["lr"])  # a tensor lr never takes this path (own_foreach_ok)
    s = scale.double()
    sigma = -lr * s / (1 - float(beta1) ** step)
    div = (torch.sqrt(1 - float(beta2) ** step) * sigma).float()
    add = (float(group["eps"]) / sigma).float()
    zero = (div == 0) | (sigma == 0)
    inf = torch.full_like(div, math.inf)
    div, add = torch.where(zero, inf, div), torch.where(zero, inf, add)
    decay = (1 - lr * s * float(group["weight_decay"])).float()
    return div, add, decay


# ---------------------------------------------------------------------------------- RMSprop


class _RMSpropAlgorithm(Algorithm):
    name = "rmsprop"
    base_class = RMSprop
    bias_corrected = False

    def beta(self, group: dict[str, Any]) -> float | Tensor:
        return group["alpha"]  # type: ignore[no-any-return]

    def update_sources(self, group: dict[str, Any], batch: GroupBatch) -> dict[str, list[Tensor]]:
        out = {"v": real_views(batch.buffers["square_avgs"], batch.has_complex)}
        if group["centered"]:
            out["ga"] = real_views(batch.buffers["grad_avgs"], batch.has_complex)
        if group["momentum"] > 0:
            out["num"] = real_views(batch.buffers["momentum_buffer_list"], batch.has_complex)
        return out

    def needs_grad_average(self, group: dict[str, Any]) -> bool:
        return not group["momentum"] > 0

    def unit_update(
        self, group: dict[str, Any], g: Tensor, src: dict[str, Tensor], rows: dict[str, Tensor]
    ) -> Tensor:
        momentum = float(group["momentum"])
        return _stats.rmsprop_update_(
            g, src["v"], src["num"], alpha=float(group["alpha"]), eps=float(group["eps"]),
            mode="momentum" if momentum > 0 else "average", momentum=momentum,
            grad_avg=src.get("ga"), bias=rows.get("avg_bias"),
        )  # fmt: skip

    def check_warmup_group(self, group: dict[str, Any]) -> None:
        if not 0.0 <= group["alpha"] < 1.0:
            raise ValueError(
                f"Invalid alpha value: {group['alpha']} (warm-up needs 0 <= alpha < 1)"
            )

    def init_group(self, opt: Optimizer, group: dict[str, Any]) -> GroupBatch:
        b = GroupBatch(
            buffers={"square_avgs": [], "momentum_buffer_list": [], "grad_avgs": []},
            second_moment_key="square_avgs",
        )
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

    def update(
        self,
        group: dict[str, Any],
        batch: GroupBatch,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> None:
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

    def scaled_foreach_supports(
        self, group: dict[str, Any], grad_scale: Tensor | None, found_inf: Tensor | None
    ) -> bool:
        """RMSprop without momentum: torch applies a momentum buffer with a single ``alpha``,
        which has no per-tensor form."""
        return bool(group["momentum"] == 0)

    def scaled_foreach(
        self, group: dict[str, Any], batch: GroupBatch, scale: Tensor, step: Tensor, host: bool
    ) -> None:
        """torch's foreach RMSprop step (no momentum) at ``lr * s`` per tensor, no parameter copy.

        The ops of ``torch.optim.rmsprop._multi_tensor_rmsprop`` in the same order, the last one
        ``addcdiv(p, g, avg, value=-lr)`` with a per-tensor value: with ``host`` the host scalars
        ``-lr * s`` (torch's step at ``lr * s`` bit for bit), otherwise ``avg`` divided by the
        0-d device tensors ``-lr * s`` first (torch's capturable RMSprop divides by ``-lr`` the
        same way; at ``s = 0`` that is ``avg / -0 = -inf``, a step of exactly 0, since
        ``avg >= eps > 0``).
        """
        alpha, eps, wd = float(group["alpha"]), float(group["eps"]), float(group["weight_decay"])
        lr = float(group["lr"])
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
                real_views(cast(list[Tensor], t), batch.has_complex) for t in bucket[:3]
            )
            steps = cast(list[Tensor], bucket[4])
            grads = _moment_grads(group, params, grads, steps, wd)
            torch._foreach_mul_(square_avgs, alpha)
            torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
            if group["centered"]:
                grad_avgs = real_views(cast(list[Tensor], bucket[3]), batch.has_complex)
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


ADAM = _AdamAlgorithm()
RMSPROP = _RMSpropAlgorithm()
#: The torch classes WarmupOptimizer can wrap, exact types only (a subclass may change the step).
ALGORITHMS: dict[type[Optimizer], Algorithm] = {Adam: ADAM, AdamW: ADAM, RMSprop: RMSPROP}


# --------------------------------------------------------------------- loading as torch

#: The flags each torch class's ``__setstate__`` fills in for state dicts saved before the flag
#: existed, with the default it fills in (AdamW: Adam's, then ``decoupled_weight_decay=True``).
LOAD_DEFAULTS: dict[type[Optimizer], dict[str, Any]] = {
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
LOAD_DEFAULTS[AdamW] = LOAD_DEFAULTS[Adam]
#: What a torch class's ``__setstate__`` sets whatever the state dict says.
LOAD_FORCED: dict[type[Optimizer], dict[str, Any]] = {AdamW: {"decoupled_weight_decay": True}}


def fill_in_as_torch(
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
        for key, default in LOAD_DEFAULTS[base].items():
            group.setdefault(key, default)
        group.update(LOAD_FORCED.get(base, {}))
        fused = group.get("fused")
        for p in group["params"]:
            st = state.get(p)
            if not st or "step" not in st or torch.is_tensor(st["step"]):
                continue
            step = float(st["step"])
            if group["capturable"] or fused:
                st["step"] = torch.tensor(
                    step,
                    dtype=_get_scalar_dtype(is_fused=fused),  # type: ignore[no-untyped-call]
                    device=p.device,
                )
            else:
                st["step"] = torch.tensor(step, dtype=_get_scalar_dtype())  # type: ignore[no-untyped-call]
