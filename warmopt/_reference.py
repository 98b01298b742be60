"""Slow, obvious reference of the whole warm-up step: the test oracle for the fast paths.

Everything is done one parameter at a time with Python floats for the policy arithmetic
(``math``, float64), the fresh ratio element by element in float64, and torch's *single-tensor*
update called with ``lr * scale`` directly (no snapshot, no lerp). It shares no code with the
optimizer's stages (``_collect``/``_measure``/``_advance``/``_apply``), ``_stats.py`` or
``Measured.update`` beyond torch itself and the policy's settings, so agreement checks the
vectorised statistics, the policy arithmetic, the per-tensor bookkeeping and the lerp identity at
once. Only per-tensor granularity.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.rmsprop import rmsprop

from .policies import (
    Constant,
    Linear,
    Measured,
    RAdamRectification,
    UntunedExponential,
    UntunedLinear,
    WarmupPolicy,
)

__all__ = ["ReferenceOptimizer"]


def _n_eff(t: float, beta: float) -> float:
    if t <= 0:
        return 0.0
    return float((1 + beta) * (1 - beta**t) / ((1 - beta) * (1 + beta**t)))


class ReferenceOptimizer:
    """Per-tensor warm-up reference for one param group of Adam/AdamW (``base="adam"``) or
    RMSprop (``base="rmsprop"``). ``hyper`` are torch's keyword arguments (``lr``, ``betas`` or
    ``alpha``, ``eps``, ``weight_decay``, ...)."""

    def __init__(self, params: list[Tensor], base: str, policy: WarmupPolicy, **hyper: Any) -> None:
        self.params = list(params)
        self.base = base
        self.policy = policy
        self.hyper = hyper
        self.state: dict[int, dict[str, Any]] = {}
        self.scales: dict[int, float] = {}
        self.calls = 0
        self.done = False
        # a policy that can fall, once every scale is 1: measured steps 1, 2, 4, ... apart (at
        # most spec.watch), torch's own step between them
        self.interval, self.gap = 1, 0

    # -- policy, one tensor, plain floats
    def _policy(self, st: dict[str, Any], t: float, beta: float, r: Tensor | None) -> float:
        p = self.policy
        if isinstance(p, Constant):
            return 1.0
        if isinstance(p, Linear):
            return min(1.0, t / p.warmup_steps)
        if isinstance(p, UntunedLinear):
            return min(1.0, t * (1 - beta) / 2)
        if isinstance(p, UntunedExponential):
            return 1 - math.exp(-(1 - beta) * t)
        if isinstance(p, RAdamRectification):
            rho_inf = 2 / (1 - beta) - 1
            rho_t = rho_inf - 2 * t * beta**t / (1 - beta**t)
            if rho_t <= 5:
                return 0.0
            return math.sqrt(
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            )
        assert isinstance(p, Measured)
        n_now, n_prev = _n_eff(t, beta), max(1.0, _n_eff(t - 1, beta))
        measured = r is not None and r.numel() > 0 and float(r.sum()) > 0
        if measured:
            assert r is not None
            m1 = float(r.mean())
            if p.kurtosis:
                if r.numel() >= 2:
                    k_step = float(r.var(unbiased=True)) / m1**2
                else:
                    k_step = float(r[0] - 1) ** 2
                weight = n_prev
                st["evidence"] += weight
                st["kurtosis"] += weight * (max(0.0, k_step) - st["kurtosis"]) / st["evidence"]
        correction = 1.0
        if p.drift:
            rho = Measured.DRIFT_DECAY
            if measured:
                excess = m1 - 1 - st["kurtosis"] / n_prev
                st["drift_var"] = rho * st["drift_var"] + (1 - rho) * (excess - st["drift"]) ** 2
                st["drift"] = rho * st["drift"] + (1 - rho) * excess
            count = max(1, r.numel()) if r is not None else st["count"]
            noise = max(st["kurtosis"] / count, st["drift_var"])
            sigma = math.sqrt(noise * (1 - rho) / (1 + rho))
            delta = max(0.0, st["drift"] - Measured.DRIFT_Z * sigma)
            w_new = (1 - beta) / (1 - beta**t)
            correction = min(1.0, (1 + p.tol) * math.sqrt((1 + w_new * delta) / (1 + delta)))
        err = 0.5 * math.sqrt(st["kurtosis"] / n_now)
        n_inf = (1 + beta) / (1 - beta)
        target = max(p.tol, math.sqrt(2) * 0.5 * math.sqrt(st["kurtosis"] / n_inf))
        cand = min(1.0, target / err)
        st["confidence"] = cand if p.rewarm else max(st["confidence"], cand)
        scale = 1.0
        if p.max_update is not None:
            scale = st["cap"]
        if p.confidence:
            scale = min(scale, st["confidence"])
        if p.drift:
            scale *= correction
        if self.base == "rmsprop" and p.max_update is None:
            scale *= math.sqrt(1 - beta**t)
        return float(scale)

    # -- the relative step of one tensor, float64, element by element in spirit
    def _relative_step(self, i: int, p: Tensor, st: dict[str, Any], t: float) -> float | None:
        """lr * ||d|| / ||p|| on the first ``sample`` real coordinates, or None for a tensor that
        follows the matrices (fewer than two dimensions, or zero on the window)."""
        h, pol = self.hyper, self.policy
        assert isinstance(pol, Measured)
        real = (lambda x: torch.view_as_real(x) if x.is_complex() else x)  # noqa: E731
        g = p.grad.detach()
        maximize = h.get("maximize", False)
        coupled = self.base == "rmsprop" or not h.get("decoupled_weight_decay", False)
        g = -g if maximize else g
        if coupled:
            g = g + h.get("weight_decay", 0) * p.detach()
        n = p.numel() * (2 if p.is_complex() else 1)
        k = n if pol.sample is None else min(n, pol.sample)
        gf = real(g).double().flatten()[:k]
        pf = real(p.detach()).double().flatten()[:k]
        if self.base == "adam":
            b1, b2 = (float(b) for b in h.get("betas", (0.9, 0.999)))
            m = b1 * real(st["m"]).double().flatten()[:k] + (1 - b1) * gf
            v = b2 * real(st["v"]).double().flatten()[:k] + (1 - b2) * gf * gf
            if h.get("amsgrad", False):
                v = torch.maximum(real(st["vmax"]).double().flatten()[:k], v)
            d = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + h.get("eps", 1e-8))
        else:
            a = float(h.get("alpha", 0.99))
            v = a * real(st["v"]).double().flatten()[:k] + (1 - a) * gf * gf
            if h.get("centered", False):
                ga = a * real(st["gavg"]).double().flatten()[:k] + (1 - a) * gf
                v = v - ga * ga
            den = torch.sqrt(v) + h.get("eps", 1e-8)
            mu = float(h.get("momentum", 0))
            if mu > 0:
                d = mu * real(st["buf"]).double().flatten()[:k] + gf / den
            else:
                st["gbar"] = 0.9 * st.get("gbar", torch.zeros(k, dtype=torch.float64)) + 0.1 * gf
                d = (st["gbar"] / (1 - 0.9**t)) / den
        norm_p = float(pf.norm())
        if (p.dim() < 2 and pol.follow_vectors) or not norm_p > 0.0:  # zero (or NaN): follows
            return None
        return float(h.get("lr", 1e-3)) * float(d.norm()) / norm_p

    @torch.no_grad()
    def step(self) -> None:
        h = self.hyper
        # warm-up over (every tensor with state at scale 1, and the scale cannot fall): torch's
        # own step, until a tensor gets its first gradient
        new_tensor = any(
            p.grad is not None and i not in self.state for i, p in enumerate(self.params)
        )
        if self.done and not new_tensor:
            self._plain_step()
            return
        self.done = False
        if new_tensor:
            self.interval, self.gap = 1, 0
        elif self.gap > 0:
            self.gap -= 1
            self._plain_step()
            return
        every = self.policy.spec.every
        calls = self.calls
        self.calls += 1
        pending = []
        for i, p in enumerate(self.params):
            # staggered: tensor i on calls i+1, i+1+every, ...
            measure = (calls - 1 - i) % every == 0
            if p.grad is None:
                continue
            g = p.grad
            st = self.state.setdefault(
                i,
                {
                    "step": torch.tensor(0.0),
                    "m": torch.zeros_like(p),
                    "v": torch.zeros_like(p),
                    "vmax": torch.zeros_like(p),
                    "buf": torch.zeros_like(p),
                    "gavg": torch.zeros_like(p),
                    **(self.policy.initial_state() if isinstance(self.policy, Measured) else {}),
                    "count": max(1, p.numel() * (2 if p.is_complex() else 1)),
                },
            )
            beta = float(
                h.get("betas", (0.9, 0.999))[1] if self.base == "adam" else h.get("alpha", 0.99)
            )
            t = float(st["step"]) + 1
            size = self.policy.spec.sample
            n_real = p.numel() * (2 if p.is_complex() else 1)
            if size is not None and n_real > size:
                st["count"] = size
            r = None
            if t >= 2 and measure:
                g_eff = g
                if self.base == "rmsprop" or not h.get("decoupled_weight_decay", False):
                    g_eff = (-g if h.get("maximize", False) else g) + h.get("weight_decay", 0) * p
                gr = torch.view_as_real(g_eff) if g.is_complex() else g_eff
                vr = torch.view_as_real(st["v"]) if g.is_complex() else st["v"]
                x = gr.double().flatten() ** 2
                vhat_prev = vr.double().flatten() / (1 - beta ** (t - 1))
                w = (1 - beta) / (1 - beta**t)
                den = torch.maximum(vhat_prev, w * x).clamp_min(1e-30)
                r = x / den
                if size is not None and r.numel() > size:
                    # window floor(t / every) mod W of `size` coordinates, the last one flush
                    # with the end (keyed on the tensor's own step count)
                    j = int(t // every) % math.ceil(r.numel() / size)
                    start = min(j * size, r.numel() - size)
                    r = r[start : start + size]
            ratio = None
            if isinstance(self.policy, Measured) and self.policy.max_update is not None:
                ratio = self._relative_step(i, p, st, t)
            pending.append((i, p, g, st, t, beta, r, ratio))
        # the cap of every tensor first: the vectors follow the median of the matrices
        pol = self.policy
        if isinstance(pol, Measured) and pol.max_update is not None:
            # a NaN step (NaN gradient) measures nothing: the tensor keeps its cap
            blind = {i for i, *_, ratio in pending if ratio is not None and math.isnan(ratio)}
            lead = {i: min(1.0, pol.max_update / ratio) if ratio > 0 else 1.0
                    for i, _, _, _, _, _, _, ratio in pending
                    if ratio is not None and i not in blind}  # fmt: skip
            follow = statistics.median_low(lead.values()) if lead else 1.0
            for i, _, _, st, _, _, _, _ in pending:
                if i in blind:
                    continue
                c = lead.get(i, follow)
                st["cap"] = c if pol.rewarm else max(st["cap"], c)
        for i, p, g, st, t, beta, r, _ in pending:
            scale = self._policy(st, t, beta, r)
            self.scales[i] = scale
            self._torch_step(p, g, st, float(h.get("lr", 1e-3)) * scale)
        at_one = all(v >= 1.0 for v in self.scales.values())
        if not self.policy.spec.can_fall and at_one:
            self.done = True
        elif self.policy.spec.watch > 1:
            self.interval = min(2 * self.interval, self.policy.spec.watch) if at_one else 1
            self.gap = self.interval - 1

    def _plain_step(self) -> None:
        """torch's single-tensor step at the full lr for every tensor with a gradient."""
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.scales[i] = 1.0
                self._torch_step(p, p.grad, self.state[i], float(self.hyper.get("lr", 1e-3)))

    def _torch_step(self, p: Tensor, g: Tensor, st: dict[str, Any], lr: float) -> None:
        """torch's own single-tensor Adam/AdamW or RMSprop update of ``p`` at ``lr``."""
        h = self.hyper
        if self.base == "adam":
            b1, b2 = h.get("betas", (0.9, 0.999))
            adam(
                [p], [g], [st["m"]], [st["v"]], [st["vmax"]], [st["step"]],
                foreach=False, amsgrad=h.get("amsgrad", False), beta1=b1, beta2=b2, lr=lr,
                weight_decay=h.get("weight_decay", 0), eps=h.get("eps", 1e-8),
                maximize=h.get("maximize", False),
                decoupled_weight_decay=h.get("decoupled_weight_decay", False),
                has_complex=p.is_complex(),
            )  # fmt: skip
        else:
            momentum = h.get("momentum", 0)
            rmsprop(
                [p], [g], [st["v"]], [st["gavg"]] if h.get("centered") else [],
                [st["buf"]] if momentum > 0 else [], [st["step"]], foreach=False,
                lr=lr, alpha=float(h.get("alpha", 0.99)), eps=h.get("eps", 1e-8),
                weight_decay=h.get("weight_decay", 0), momentum=momentum,
                centered=h.get("centered", False), maximize=h.get("maximize", False),
                has_complex=p.is_complex(),
            )  # fmt: skip
