"""Counting the ATen ops a step dispatches (the counter lives in the package's private helpers,
shared with the benchmarks)."""

from __future__ import annotations

from typing import Any

import torch

from warmopt._opcount import SYNC_OPS, OpCounter

__all__ = ["SYNC_OPS", "OpCounter", "make", "step_ops"]


def step_ops(opt: torch.optim.Optimizer, params: list[torch.Tensor], warm: int = 3) -> OpCounter:
    """Ops of one step after ``warm`` steps (so lazy state init is not counted)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(warm + 1):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        if _ < warm:
            opt.step()
    counter = OpCounter()
    with counter:
        opt.step()
    return counter


def make(n: int, cls: Any, **kw: Any) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """A small weight matrix (entries 1e-3: the default policy's cap on the relative step binds
    at ``lr=1e-3``, so the counted step is a warming one) and ``n`` vectors, which follow it."""
    params = [torch.nn.Parameter(torch.full((2, 4), 1e-3))]
    params += [torch.nn.Parameter(torch.zeros(8)) for _ in range(n)]
    return cls(params, **kw), params
