"""``warmopt.Adam``, ``AdamW`` and ``RMSprop``: torch's exact signatures plus warm-up.

Each writes torch's signature once, in its ``__init__``, and hands its arguments by torch's own
names to one builder (``WarmupOptimizer._build``), which builds the torch optimizer of the same
name (so argument checks, defaults and error messages are torch's own) and steps it through
:class:`warmopt.WarmupOptimizer`. They take parameters, as
torch's classes do; to warm up an existing torch optimizer instance, wrap it with
``warmopt.WarmupOptimizer(optimizer)``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .optimizer import WarmupOptimizer
from .policies import WarmupPolicy

__all__ = ["Adam", "AdamW", "RMSprop"]


class Adam(WarmupOptimizer):
    r""":class:`torch.optim.Adam` with a warm-up: torch's signature plus ``warmup`` and
    ``granularity``.

    Each step is torch's Adam step at ``lr * s``, the scale ``s`` in [0, 1] coming from the
    warm-up policy; ``param_groups[i]['lr']`` is never written (LR schedulers own it).
    ``warmup=None`` is :class:`torch.optim.Adam` bit for bit.

    Args:
        params (iterable): parameters, ``(name, parameter)`` pairs or param groups (dicts), as
            for torch.optim.Adam. Not an optimizer: wrap one with :class:`WarmupOptimizer`.
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        betas (tuple[float or Tensor, float or Tensor], optional): decay rates of the running
            averages of the gradient and of its square (default: (0.9, 0.999)).
        eps (float, optional): added to the denominator (default: 1e-8).
        weight_decay (float, optional): L2 penalty, decoupled with ``decoupled_weight_decay``
            (default: 0).
        amsgrad (bool, optional): the AMSGrad variant (default: False).
        foreach (bool, optional): torch's foreach implementation (default: None, torch's
            choice).
        maximize (bool, optional): maximize the objective (default: False).
        capturable (bool, optional): keep every step number on the device (default: False).
        differentiable (bool, optional): let autograd run through the step (default: False).
        fused (bool, optional): torch's fused implementation (default: None).
        decoupled_weight_decay (bool, optional): AdamW's decay (default: False).
        warmup (WarmupPolicy, str or None, optional): the warm-up policy or its name:
            ``"measured"`` (default), ``"radam"``, ``"untuned_linear"``,
            ``"untuned_exponential"``, ``"linear"``, ``"constant"``, or ``"none"``/``None``
            (off). See :mod:`warmopt.policies`.
        granularity (str, optional): one scale per parameter tensor (``"tensor"``, default), per
            param group (``"group"``) or for the whole optimizer (``"global"``).

    Example:
        >>> import torch, warmopt
        >>> opt = warmopt.Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3, warmup="radam")
    """

    _wraps_optimizers = False


class AdamW(WarmupOptimizer):
    r""":class:`torch.optim.AdamW` (``weight_decay=1e-2``, decoupled) with a warm-up: torch's
    signature plus ``warmup`` and ``granularity``.

    Each step is torch's AdamW step at ``lr * s``, the scale ``s`` in [0, 1] coming from the
    warm-up policy; ``param_groups[i]['lr']`` is never written (LR schedulers own it). The scale
    multiplies the decoupled decay too, as an LR schedule would (``p <- p (1 - s lr wd)``).
    ``warmup=None`` is :class:`torch.optim.AdamW` bit for bit.

    Args:
        params (iterable): parameters, ``(name, parameter)`` pairs or param groups (dicts), as
            for torch.optim.AdamW. Not an optimizer: wrap one with :class:`WarmupOptimizer`.
        lr (float or Tensor, optional): learning rate (default: 1e-3).
        betas (tuple[float or Tensor, float or Tensor], optional): decay rates of the running
            averages of the gradient and of its square (default: (0.9, 0.999)).
        eps (float, optional): added to the denominator (default: 1e-8).
        weight_decay (float, optional): decoupled weight decay (default: 1e-2).
        amsgrad (bool, optional): the AMSGrad variant (default: False).
        maximize (bool, optional): maximize the objective (default: False).
        foreach (bool, optional): torch's foreach implementation (default: None, torch's
            choice).
        capturable (bool, optional): keep every step number on the device (default: False).
        differentiable (bool, optional): let autograd run through the step (default: False).
        fused (bool, optional): torch's fused implementation (default: None).
        warmup (WarmupPolicy, str or None, optional): the warm-up policy or its name:
            ``"measured"`` (default), ``"radam"``, ``"untuned_linear"``,
            ``"untuned_exponential"``, ``"linear"``, ``"constant"``, or ``"none"``/``None``
            (off). See :mod:`warmopt.policies`.
        granularity (str, optional): one scale per parameter tensor (``"tensor"``, default), per
            param group (``"group"``) or for the whole optimizer (``"global"``).

    Example:
        >>> import torch, warmopt
        >>> opt = warmopt.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3, weight_decay=0.1)
    """

    _wraps_optimizers = False

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        warmup: WarmupPolicy | str | None = "measured",
        granularity: str = "tensor",
    ) -> None:
        self._build(torch.optim.AdamW, params, locals())


class RMSprop(WarmupOptimizer):
    r""":class:`torch.optim.RMSprop` with a warm-up: torch's signature (every flag positional, as
    in torch) plus keyword-only ``warmup`` and ``granularity``.

    Each step is torch's RMSprop step at ``lr * s``, the scale ``s`` in [0, 1] coming from the
    warm-up policy; ``param_groups[i]['lr']`` is never written (LR schedulers own it).
    ``warmup=None`` is :class:`torch.optim.RMSprop` bit for bit. Its ``square_avg`` is not
    bias-corrected, so the first raw step is ``lr/sqrt(1-alpha)`` (10x ``lr`` at
    ``alpha=0.99``); :class:`warmopt.Measured` removes that factor exactly (see its
    docstring). Warm-up needs ``0 <= alpha < 1``.

    Args:
        params (iterable): parameters, ``(name, parameter)`` pairs or param groups (dicts), as
            for torch.optim.RMSprop. Not an optimizer: wrap one with :class:`WarmupOptimizer`.
        lr (float or Tensor, optional): learning rate (default: 1e-2).
        alpha (float, optional): decay rate of the running average of the squared gradient
            (default: 0.99).
        eps (float, optional): added to the denominator (default: 1e-8).
        weight_decay (float, optional): L2 penalty (default: 0).
        momentum (float, optional): momentum factor (default: 0).
        centered (bool, optional): normalise by an estimate of the gradient's variance
            (default: False).
        capturable (bool, optional): keep every step number on the device (default: False).
        foreach (bool, optional): torch's foreach implementation (default: None, torch's
            choice).
        maximize (bool, optional): maximize the objective (default: False).
        differentiable (bool, optional): let autograd run through the step (default: False).
        warmup (WarmupPolicy, str or None, optional): the warm-up policy or its name:
            ``"measured"`` (default), ``"radam"``, ``"untuned_linear"``,
            ``"untuned_exponential"``, ``"linear"``, ``"constant"``, or ``"none"``/``None``
            (off). See :mod:`warmopt.policies`.
        granularity (str, optional): one scale per parameter tensor (``"tensor"``, default), per
            param group (``"group"``) or for the whole optimizer (``"global"``).

    Example:
        >>> import torch, warmopt
        >>> opt = warmopt.RMSprop(torch.nn.Linear(2, 2).parameters(), 1e-2, 0.99)
    """

    _wraps_optimizers = False

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        warmup: WarmupPolicy | str | None = "measured",
        granularity: str = "tensor",
    ) -> None:
        self._build(torch.optim.RMSprop, params, locals())
