"""Synthetic gradient streams of known statistics and the scale curves they give (the tests'
own copy: tests do not import the benchmarks).

Gradients:

* ``gaussian``   N(0, 1)                                   kurtosis kappa = 3
* ``laplace``    Laplace(0, 1)                             kappa = 6
* ``sparse``     +-1 with probability 0.05, else 0         kappa = 20 (embedding-like)
* ``drift``      N(0, 1) * 1.02^t for t < 200, then flat   gradients growing faster than v̂ follows
"""

from __future__ import annotations

import torch

import warmopt

__all__ = ["first_reach", "make_gradient", "scale_curve"]


def make_gradient(kind: str, step: int, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(n, generator=gen)
    if kind == "laplace":
        u = torch.rand(n, generator=gen) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs())
    if kind == "sparse":
        mask = (torch.rand(n, generator=gen) < 0.05).float()
        return mask * torch.sign(torch.randn(n, generator=gen))
    if kind == "drift":
        return torch.randn(n, generator=gen) * 1.02 ** min(step, 200)
    raise ValueError(f"unknown gradient kind {kind!r}")


def scale_curve(
    policy: warmopt.WarmupPolicy,
    kind: str,
    beta2: float,
    steps: int,
    n: int = 4096,
    seed: int = 0,
    lr: float = 1e-6,
    init: float = 0.0,
) -> list[float]:
    """The scale after each of ``steps`` steps of ``warmopt.Adam`` on one tensor of ``n``
    coordinates fed ``kind`` gradients: a vector at zero by default (``init=0``); with ``init``
    a ``[n // 64, 64]`` matrix of entries of RMS ``init`` (a weight matrix the cap measures)."""
    gen = torch.Generator().manual_seed(seed)
    if init:
        p = torch.nn.Parameter(init * torch.randn(n // 64, 64, generator=gen))
    else:
        p = torch.nn.Parameter(torch.zeros(n))
    opt = warmopt.Adam([p], lr=lr, betas=(0.9, beta2), warmup=policy)
    curve = []
    for t in range(1, steps + 1):
        p.grad = make_gradient(kind, t, p.numel(), gen).view(p.shape)
        opt.step()
        curve.append(float(opt.warmup_scale[0][0]))
    return curve


def first_reach(curve: list[float], level: float) -> int | None:
    """The first step (from 1) at which ``curve`` reaches ``level`` (1.0 within 1e-6)."""
    for i, s in enumerate(curve):
        if s >= level - (1e-6 if level == 1.0 else 0.0):
            return i + 1
    return None
