"""The table of optimizer configurations every parity/oracle test is expanded over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import warmopt

#: every per-parameter key the default (measured) policy keeps, as they appear in ``state[p]``
WARMUP_KEYS = ("warmup_scale", *(f"warmup_{k}" for k in warmopt.Measured.state_init))

MODES = {
    "single": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@dataclass(frozen=True)
class Case:
    base: str  # "adam" | "adamw" | "rmsprop"
    kwargs: dict[str, Any] = field(default_factory=dict)
    supports: tuple[str, ...] = ("single", "foreach", "fused")

    def __str__(self) -> str:
        kw = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.base}({kw})"

    def torch_class(self) -> type[torch.optim.Optimizer]:
        return {
            "adam": torch.optim.Adam,
            "adamw": torch.optim.AdamW,
            "rmsprop": torch.optim.RMSprop,
        }[self.base]

    def warmopt_class(self) -> type[warmopt.WarmupOptimizer]:
        return {"adam": warmopt.Adam, "adamw": warmopt.AdamW, "rmsprop": warmopt.RMSprop}[self.base]

    def reference_base(self) -> str:
        return "rmsprop" if self.base == "rmsprop" else "adam"

    def reference_kwargs(self) -> dict[str, Any]:
        kw = dict(self.kwargs)
        if self.base == "adamw":
            kw.setdefault("weight_decay", 1e-2)
            kw["decoupled_weight_decay"] = True
        if self.base == "rmsprop":
            kw.setdefault("lr", 1e-2)
        return kw


ADAM_ONLY = ("single", "foreach", "fused")
NO_FUSED = ("single", "foreach")

CASES = [
    Case("adam", {"lr": 1e-2}),
    Case("adam", {"lr": 1e-2, "amsgrad": True}),
    Case("adam", {"lr": 1e-2, "maximize": True}),
    Case("adam", {"lr": 1e-2, "weight_decay": 0.1}),
    Case("adam", {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    Case("adam", {"lr": 3e-2, "betas": (0.8, 0.99), "eps": 1e-6}),
    Case("adamw", {"lr": 1e-2}),
    Case("adamw", {"lr": 1e-2, "weight_decay": 0.3, "amsgrad": True, "maximize": True}),
    Case("rmsprop", {"lr": 1e-2}, NO_FUSED),
    Case("rmsprop", {"lr": 1e-2, "momentum": 0.9}, NO_FUSED),
    Case("rmsprop", {"lr": 1e-2, "centered": True, "weight_decay": 0.01}, NO_FUSED),
    Case("rmsprop", {"lr": 1e-3, "alpha": 0.9, "momentum": 0.5, "maximize": True}, NO_FUSED),
]

CASE_MODES = [(c, m) for c in CASES for m in c.supports]


def make_params(
    shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32, seed: int = 0,
    init: float = 1.0,
) -> list[torch.Tensor]:  # fmt: skip
    """Parameters of ``shapes`` with N(0, ``init``^2) entries (small ones: the default policy's
    cap binds, the warm-up lasts)."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=gen, dtype=torch.float64) * init).to(dtype) for s in shapes]


def twins(
    shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32, n: int = 2,
    init: float = 1.0,
) -> list[list[torch.nn.Parameter]]:  # fmt: skip
    base = make_params(shapes, dtype, init=init)
    return [[torch.nn.Parameter(p.clone()) for p in base] for _ in range(n)]


def feed(
    param_sets: list[list[torch.Tensor]], step: int, none_every: int = 0, scale: float = 1.0
) -> None:
    """Give every twin the same gradients; tensor ``i`` gets ``None`` on steps where
    ``none_every`` divides ``step + i`` (so tensors pause at different steps)."""
    gen = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(param_sets[0]):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
        skip = none_every and (step + i) % none_every == 0
        for ps in param_sets:
            ps[i].grad = None if skip else g.to(ps[i].dtype).clone()


#: the first default policy's settings: the precision confidence and the lag factor, no cap
#: on the relative step, a running maximum (``Measured(**V1)``); tests of that policy's math are
#: pinned to them
V1 = {"max_update": None, "confidence": True, "drift": True, "rewarm": False}


def v1(**kwargs: Any) -> warmopt.Measured:
    """The previous default policy, with ``kwargs`` on top (``tol``, ``sample`` ...)."""
    return warmopt.Measured(**{**V1, **kwargs})
