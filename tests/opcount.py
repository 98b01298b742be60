"""Counting the ATen ops a step dispatches (a TorchDispatchMode sees every op, CPU or GPU)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: ops that copy a device value to the host (a host-device sync on an accelerator)
SYNC_OPS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal")


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def syncs(self) -> int:
        return sum(n for op, n in self.ops.items() if op in SYNC_OPS)


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
    params = [torch.nn.Parameter(torch.zeros(8)) for _ in range(n)]
    return cls(params, **kw), params
