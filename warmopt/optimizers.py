"""``warmopt.Adam``, ``AdamW`` and ``RMSprop``: torch's exact signatures plus warm-up.

Each builds the torch optimizer of the same name (so argument checks, defaults and error messages
are torch's own) and steps it through :class:`warmopt.WarmupOptimizer`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .optimizer import WarmupOptimizer, _check_granularity
from .policies import WarmupPolicy, resolve_policy

__all__ = ["Adam", "AdamW", "RMSprop"]


class Adam(WarmupOptimizer):
    """:class:`torch.optim.Adam` with a warm-up; same signature plus ``warmup`` and ``granularity``.

    Example:
        >>> import torch, warmopt
        >>> opt = warmopt.Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3, warmup="radam")
    """


class AdamW(WarmupOptimizer):
    """:class:`torch.optim.AdamW` (``weight_decay=1e-2``, decoupled) with a warm-up.

    The warm-up scale multiplies the decoupled decay too, as an LR schedule would
    (``p <- p (1 - s lr wd)``).

    Example:
        >>> import torch, warmopt
        >>> opt = warmopt.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3, weight_decay=0.1)
    """

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
        policy = resolve_policy(warmup)
        _check_granularity(granularity)
        base = torch.optim.AdamW(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )
        self._adopt(base, policy, granularity)


class RMSprop(WarmupOptimizer):
    """:class:`torch.optim.RMSprop` with a warm-up; every flag positional, as in torch.

    Its ``square_avg`` is not bias-corrected, so the first raw step is ``lr/sqrt(1-alpha)``
    (10x ``lr`` at ``alpha=0.99``); :class:`warmopt.Measured` removes that factor exactly (see
    its docstring). Warm-up needs ``0 <= alpha < 1``.

    Example:
        >>> import torch, warmopt
        >>> opt = warmopt.RMSprop(torch.nn.Linear(2, 2).parameters(), 1e-2, 0.99)
    """

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
        policy = resolve_policy(warmup)
        _check_granularity(granularity)
        base = torch.optim.RMSprop(
            params,
            lr,
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
            capturable,
            foreach,
            maximize,
            differentiable,
        )
        self._adopt(base, policy, granularity)
