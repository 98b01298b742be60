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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Adam, AdamW, RMSprop
from torch.optim.adam import adam
from torch.optim.optimizer import Optimizer, _default_to_fused_or_foreach
from torch.optim.rmsprop import rmsprop

__all__ = ["Algorithm", "ALGORITHMS", "GroupBatch", "resolve_mode", "run_group"]


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
        return GroupBatch(
            params=[self.params[i]],
            grads=[self.grads[i]],
            buffers={k: v[i : i + 1] for k, v in self.buffers.items()},
            state_steps=[self.state_steps[i]],
            has_complex=torch.is_complex(self.params[i]),
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


def _real(ts: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in ts]


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
    torch._foreach_lerp_(_real(params), _real(old), keep)
