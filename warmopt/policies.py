r"""Warm-up policies: what multiplies the learning rate while the second-moment estimate settles.

A policy is a small frozen object (its settings) with a pure ``update`` that maps the changing
numbers -- 1-D float32 tensors, one entry per *unit* (a parameter tensor, a group, or the whole
optimizer) -- to their next values. The optimizer keeps those numbers as 0-d tensors in each
parameter's ``state`` (keys ``warmup_<name>``), so they are checkpointed, sharded and moved like
``exp_avg_sq``, and it calls ``update`` once per step for all units together (a constant number
of ATen ops, no host sync).

Vocabulary used everywhere: the **scale** is the factor in [0, 1] that multiplies ``lr`` inside the
step; the **policy** is what computes it; ``beta`` is the decay of the second moment (Adam's
``betas[1]``, RMSprop's ``alpha``); ``step`` is torch's per-parameter step count *after* this
step's increment (1 on the first update).

The derivations are in ``docs/warmup.md``; each class docstring states its formula.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ._stats import Statistics

__all__ = [
    "WarmupPolicy",
    "Measured",
    "RAdamRectification",
    "UntunedLinear",
    "UntunedExponential",
    "Linear",
    "Constant",
    "Statistics",
    "MeasurementSpec",
    "POLICIES",
    "resolve_policy",
]


@dataclass(frozen=True)
class MeasurementSpec:
    """What a policy needs from the optimizer, declared once (the optimizer never probes it).

    Attributes:
        statistics: whether :meth:`WarmupPolicy.update` reads a :class:`Statistics`.
        sample: measure at most this many real coordinates per tensor (a window), or all
            (``None``).
        every: measure each tensor on every ``every``-th call of ``step()``, staggered.
        can_fall: whether a scale may fall again after it reached 1; then the optimizer keeps
            measuring after every scale has reached 1.
        pooling: how each changing number (key of ``state_init``) pools over the tensors of a
            unit under ``granularity="group"``/``"global"``: ``"amin"``, ``"amax"``,
            ``"mean"`` or ``"sum"`` (the step count pools by ``amin``, beta by ``amax``, the
            statistics' sums by ``sum``).
        summary: the changing numbers :func:`warmopt.warmup_summary` reports (their medians),
            under their own names.
    """

    statistics: bool = False
    sample: int | None = None
    every: int = 1
    can_fall: bool = False
    pooling: dict[str, str] = field(default_factory=dict)
    summary: tuple[str, ...] = ()


class WarmupPolicy:
    """Base class of warm-up policies.

    Subclasses set ``name`` (the string accepted by ``warmup=``), ``needs_statistics`` (whether
    ``update`` reads a :class:`Statistics`), ``state_init`` (the initial value of each changing
    number besides the scale) and implement :meth:`update`; a policy that measures declares how
    in :attr:`spec`.
    """

    name: ClassVar[str] = ""
    needs_statistics: ClassVar[bool] = False
    state_init: ClassVar[dict[str, float]] = {}

    def update(
        self,
        state: dict[str, Tensor],
        step: Tensor,
        beta: Tensor,
        stats: Statistics | None,
        *,
        bias_corrected: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(scale, new_state)`` for this step.

        Args:
            state: the policy's changing numbers (keys of ``state_init``), one entry per unit.
            step: the step count after this step's increment (float32, ``>= 1``).
            beta: the second-moment decay per unit.
            stats: this step's measurements, or ``None`` for policies that need none.
            bias_corrected: ``False`` for RMSprop, whose ``square_avg`` is not bias-corrected.
        """
        raise NotImplementedError

    @property
    def can_fall(self) -> bool:
        """Whether the scale may fall again after it reached 1 (then the optimizer keeps
        measuring after every scale has reached 1)."""
        return False

    @functools.cached_property
    def spec(self) -> MeasurementSpec:
        """What this policy needs from the optimizer (see :class:`MeasurementSpec`)."""
        return MeasurementSpec(
            statistics=self.needs_statistics,
            can_fall=self.can_fall,
            pooling={k: "amin" for k in self.state_init},
        )

    def initial_state(self) -> dict[str, float]:
        """The value each changing number starts from (keys of ``state_init``)."""
        return dict(self.state_init)


@dataclass(frozen=True)
class Measured(WarmupPolicy):
    r"""The default: scale the step by how well the second-moment estimate is determined.

    Per unit (parameter tensor by default) the policy keeps an estimate :math:`K` of the excess
    kurtosis :math:`\kappa - 1` of :math:`g^2` and a drift estimate :math:`D`, both measured
    from the fresh ratio :math:`r = g_t^2/\hat v_{t-1}` (see
    :func:`warmopt._stats.fresh_ratio_sums`). The scale is a *confidence* :math:`c_t`, set by
    the sampling error of the adaptive step size :math:`\psi = 1/\sqrt{\hat v_t}`, times a
    *drift correction* :math:`d_t` for the part of :math:`\hat v_t` that lags behind growing
    gradients:

    .. math::
        e_t = \tfrac12\sqrt{K_t / n_\mathrm{eff}(t)},\qquad
        e^\star = \max\bigl(\mathrm{tol},\
            \sqrt2\cdot\tfrac12\sqrt{K_t/n_\mathrm{eff}(\infty)}\bigr),
        \qquad c_t = \max\bigl(c_{t-1},\ \min(1,\ e^\star/e_t)\bigr),

    .. math::
        d_t = \min\Bigl(1,\ (1+\mathrm{tol})\sqrt{\frac{1 + w_t\,\delta_t}{1 + \delta_t}}\Bigr),
        \qquad s_t = c_t\,d_t.

    * :math:`n_\mathrm{eff}(t) = (1+\beta)(1-\beta^t)/((1-\beta)(1+\beta^t))`: how many effective
      samples :math:`\hat v_t` rests on;
      :math:`\mathrm{RSE}(\hat v_t)^2 = (\kappa-1)/n_\mathrm{eff}`
      and, by the delta method, :math:`\mathrm{RSE}(\psi) = \tfrac12\mathrm{RSE}(\hat v)`.
    * :math:`K_t`: the mean of the per-step relative variance of :math:`r` across the tensor's
      :math:`N` coordinates, :math:`\frac{N}{N-1}(\overline{r^2}/\bar r^2 - 1)` (for a single
      coordinate :math:`(r-1)^2`), weighted by the sample size :math:`n_\mathrm{eff}(t-1)` each
      measurement rests on, with the prior ``prior_kurtosis`` (:math:`K_0`) counted as one sample.
      Heavy tails (:math:`K` large) need more samples; light tails fewer.
    * :math:`K_0` sets the first steps, before anything is measured: :math:`c_1 =
      2\,\mathrm{tol}/\sqrt{K_0}` (0.035 by default; the floor of :math:`e^\star` below raises
      it to 0.1 at :math:`\beta = 0.99`). It is deliberately pessimistic. The spread
      measured in the first steps, while the parameters have barely moved, understates the
      variation that the updates themselves will cause (across the 77 tensors of the quality
      benchmark: median :math:`K` 1.5 at step 5, 3.5 at step 20, ``python -m
      benchmarks.kurtosis_growth``), and the first updates are the
      ones that break training at a high ``lr``. The measurements outweigh the prior within a
      few steps (weights :math:`n_\mathrm{eff}(t-1)` against 1).
    * :math:`\delta_t`: the relative under-estimate of :math:`E[g_t^2]` by :math:`\hat v_{t-1}`
      when gradients grow faster than the EMA follows. :math:`D_t` is an EMA (rate 0.9) of
      :math:`\bar r - 1 - K_t/n_\mathrm{eff}(t-1)` (the mean fresh ratio minus what sampling noise
      alone explains), and :math:`\delta_t = \max(0, D_t - 2\sigma_D)` counts it only where it is
      significant, :math:`\sigma_D^2 = \frac{K_t}{N}\frac{1-0.9}{1+0.9}` for a unit of :math:`N`
      coordinates. A lag is a bias, not noise: it is corrected, not waited out. With
      :math:`w_t = (1-\beta)/(1-\beta^t)` the weight of the newest sample,
      :math:`E[\hat v_t] = (1 + w_t\delta_t)\,\hat v_{t-1}` while the gradients' second moment is
      :math:`(1+\delta_t)\,\hat v_{t-1}`, so :math:`\psi` is
      :math:`\sqrt{(1+\delta_t)/(1+w_t\delta_t)}` too large and :math:`d_t` undoes all of that
      beyond the tolerance ``tol`` (the per-step correction of StableAdamW's update clipping,
      from a significance-filtered signal). :math:`d_t` may fall and rise; :math:`c_t` only
      rises.
    * :math:`e^\star`: the tolerance, floored at :math:`\sqrt2` times the error the estimate
      reaches for :math:`t\to\infty`, so the warm-up ends even when heavy tails and a small
      :math:`\beta` keep :math:`\hat v` imprecise forever (it then ends when
      :math:`n_\mathrm{eff} = n_\mathrm{eff}(\infty)/2`).
    * RMSprop (``bias_corrected=False``): its ``square_avg`` is :math:`(1-\alpha^t)\hat v_t`, so
      its raw step is :math:`1/\sqrt{1-\alpha^t}` too large (10x at step 1). The applied scale is
      :math:`s_t\sqrt{1-\alpha^t}`, which removes that bias exactly.

    The warm-up of a unit ends when :math:`s_t = 1` (confidence 1, no significant drift); once
    every unit is there the optimizer stops measuring and steps exactly as torch.
    For stationary Gaussian gradients :math:`K \to 2` and
    :math:`c_t \approx 2\,\mathrm{tol}\sqrt{n_\mathrm{eff}(t)/2}`, reaching 1 at
    :math:`n_\mathrm{eff} = 1/(2\,\mathrm{tol}^2)` (50 steps by default).

    Args:
        tol (float, optional): tolerated relative error of the adaptive step size
            :math:`1/\sqrt{\hat v}`, e.g. 0.1 = 10 % (default: 0.1). Must be > 0.
        rewarm (bool, optional): let the confidence fall again when the estimate goes stale and
            rise as it recovers; the statistics are then measured on every step (default: False).
        drift (bool, optional): apply the drift correction :math:`d_t` (default: True; ``False``
            is an ablation).
        kurtosis (bool, optional): measure :math:`K`; ``False`` fixes it at the Gaussian 2, which
            makes the confidence a function of the step count only, like RAdam (an ablation).
        prior_kurtosis (float, optional): :math:`K_0`, the excess kurtosis assumed before the
            first measurement, with the weight of one sample (default: 32). Must be > 0.
        measure_every (int, optional): measure each tensor's statistics on every ``k``-th call
            of ``step()`` while warming, staggered: tensor number ``j`` (in ``param_groups``
            order, from 0) on the calls ``c`` with ``c = j + 2 (mod k)`` (counting from 1), so
            every call measures about ``1/k`` of the tensors and the warming steps cost the
            same; the scale still advances every step from the latest :math:`K` and :math:`D`
            (default: 1, every tensor on every step). A tensor's first measurement may then
            wait up to ``k - 1`` calls, on the prior's cautious scale. With ``k > 1`` a resumed
            run restarts the call count, so resume is exact only for ``k = 1``.
        sample (int or None, optional): measure at most this many real coordinates of each
            parameter tensor per measured step: a contiguous window of the flattened tensor,
            chosen by the tensor's step count so that consecutive measurements take consecutive
            windows and sweep the tensor (``_stats.window_starts``; a resumed run measures the
            same windows). :math:`N` above is then the window size: the sampling error of
            the window mean, :math:`\sqrt{K/N}` relative (2.2 % for :math:`K = 2`,
            :math:`N = 4096`), is below ``tol`` and is what the drift's significance test
            :math:`\sigma_D` allows for; the statistics then read at most
            ``sample`` coordinates per tensor (a view, or a gather on accelerators) instead of
            all of them. Tensors of FSDP2 (DTensor) parameters are measured whole on each
            rank's shard. ``None`` measures every coordinate (default: 4096).

    Example:
        >>> import torch, warmopt
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> opt = warmopt.Adam([w], lr=1e-3, warmup=warmopt.Measured(tol=0.1))
        >>> w.grad = torch.ones(3); opt.step()
        >>> round(float(opt.warmup_scale[0][0]), 4)
        0.0354

    References:
        Kish, Survey Sampling (1965), effective sample size. Liu et al., On the Variance of the
        Adaptive Learning Rate and Beyond, ICLR 2020. Wortsman et al., Stable and low-precision
        training for large-scale vision-language models, NeurIPS 2023 (``g^2/v̂`` as staleness,
        update clipping).
    """

    tol: float = 0.1
    rewarm: bool = False
    drift: bool = True
    kurtosis: bool = True
    prior_kurtosis: float = 32.0
    measure_every: int = 1
    sample: int | None = 4096

    name: ClassVar[str] = "measured"
    needs_statistics: ClassVar[bool] = True
    state_init: ClassVar[dict[str, float]] = {
        "confidence": 0.0,
        "kurtosis": 32.0,
        "evidence": 1.0,
        "drift": 0.0,
    }
    #: Gaussian excess kurtosis of g^2 (kappa - 1 = 2): K when ``kurtosis=False``.
    GAUSSIAN_KURTOSIS: ClassVar[float] = 2.0
    #: EMA rate of the drift estimate.
    DRIFT_DECAY: ClassVar[float] = 0.9
    #: Drift counts beyond this many standard errors.
    DRIFT_Z: ClassVar[float] = 2.0

    def __post_init__(self) -> None:
        for arg in ("tol", "prior_kurtosis"):
            v = getattr(self, arg)
            if isinstance(v, bool) or not (
                isinstance(v, (int, float)) and math.isfinite(v) and v > 0
            ):
                raise ValueError(f"Invalid {arg} value: {v} (must be a finite float > 0)")
        every = self.measure_every
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"measure_every must be an int, got {type(every).__name__}")
        if every < 1:
            raise ValueError(f"Invalid measure_every value: {every} (must be >= 1)")
        size = self.sample
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError(f"sample must be an int or None, got {type(size).__name__}")
            if size < 2:
                raise ValueError(f"Invalid sample value: {size} (must be >= 2, or None)")

    @property
    def can_fall(self) -> bool:
        return self.rewarm

    @functools.cached_property
    def spec(self) -> MeasurementSpec:
        # A unit is as sure as its least sure tensor, as kurtotic as its tensors on average and
        # as drifting as its most drifting one.
        return MeasurementSpec(
            statistics=True,
            sample=self.sample,
            every=self.measure_every,
            can_fall=self.rewarm,
            pooling={"confidence": "amin", "kurtosis": "mean", "evidence": "amin", "drift": "amax"},
            summary=("kurtosis", "drift"),
        )

    def initial_state(self) -> dict[str, float]:
        k0 = self.prior_kurtosis if self.kurtosis else self.GAUSSIAN_KURTOSIS
        return {**self.state_init, "kurtosis": float(k0)}

    def update(
        self,
        state: dict[str, Tensor],
        step: Tensor,
        beta: Tensor,
        stats: Statistics | None,
        *,
        bias_corrected: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if stats is None:
            raise ValueError("Measured.update needs statistics")
        step, beta = step.double(), beta.double()
        # beta^t, beta^(t-1), 1 +- beta once for every closed form below (each written as in
        # _stats.effective_sample_size / newest_weight, so the numbers are theirs bit for bit)
        bt, bt_prev = beta**step, beta ** (step - 1)
        one_plus, one_minus = 1 + beta, 1 - beta
        n_now = one_plus * (1 - bt) / (one_minus * (1 + bt))
        n_prev = (one_plus * (1 - bt_prev) / (one_minus * (1 + bt_prev))).clamp_min(1.0)
        n_inf = one_plus / one_minus
        count = stats.count.clamp_min(1.0)
        valid = stats.valid

        # Where nothing was measured the sums may be inf/NaN (no v̂_{t-1} at step 1): select, never
        # multiply, so they cannot leak into the state. All-zero gradients (r = 0) measure nothing.
        counts = (valid > 0) & (stats.sum_r > 0)
        # count / count = 1 exactly where nothing counts (one select instead of a select of 1.0)
        m1 = torch.where(counts, stats.sum_r, count) / count
        m2 = torch.where(counts, stats.sum_r2, count) / count
        kurt, evidence = state["kurtosis"], state["evidence"]
        if self.kurtosis:
            # Relative variance of r across the tensor's coordinates (unbiased): kappa - 1 for
            # stationary gradients, and blind to a drift common to the whole tensor (r -> c r): the
            # drift term handles that. A single coordinate has no spread: use (r - 1)^2 over time.
            spread = (m2 / (m1 * m1) - 1) * count / (count - 1).clamp_min(1.0)
            k_step = torch.where(count >= 2, spread, m2 - 2 * m1 + 1).clamp_min(0.0)
            weight = n_prev * counts  # n_prev where it counts, 0 elsewhere
            evidence = evidence + weight
            kurt = kurt + weight * (k_step - kurt) / evidence
        drift = state["drift"]
        if self.drift:
            excess = m1 - 1 - kurt / n_prev
            rho = self.DRIFT_DECAY
            drift = torch.where(counts, rho * drift + (1 - rho) * excess, drift)
            sigma = torch.sqrt(kurt / count * ((1 - rho) / (1 + rho)))
            delta = (drift - self.DRIFT_Z * sigma).clamp_min(0.0)
            w = one_minus / (1 - bt)  # _stats.newest_weight
            lag = torch.sqrt((1 + w * delta) / (1 + delta))
            correction = torch.clamp((1 + self.tol) * lag, max=1.0)

        err = 0.5 * torch.sqrt(kurt / n_now)
        target = torch.clamp(math.sqrt(2.0) * 0.5 * torch.sqrt(kurt / n_inf), min=self.tol)
        candidate = torch.clamp(target / err, max=1.0)
        confidence = candidate if self.rewarm else torch.maximum(state["confidence"], candidate)
        scale = confidence * correction if self.drift else confidence
        if not bias_corrected:
            scale = scale * torch.sqrt(1 - bt)
        new_state = {
            "confidence": confidence,
            "kurtosis": kurt,
            "evidence": evidence,
            "drift": drift,
        }
        return scale.float(), new_state


def _rho(step: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """RAdam's rho_inf and rho_t, in float64 like torch.optim.RAdam's host-side arithmetic."""
    step64, beta64 = step.double(), beta.double()
    rho_inf = 2 / (1 - beta64) - 1
    beta_t = beta64**step64
    return rho_inf, rho_inf - 2 * step64 * beta_t / (1 - beta_t)


@dataclass(frozen=True)
class RAdamRectification(WarmupPolicy):
    r"""RAdam's variance rectification :math:`r_t`, exactly as ``torch.optim.RAdam`` computes it.

    .. math::
        \rho_\infty = \frac{2}{1-\beta} - 1,\quad
        \rho_t = \rho_\infty - \frac{2t\beta^t}{1-\beta^t},\quad
        s_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
        \ \text{if } \rho_t > 5,\ \text{else } 0.

    A function of the step and ``beta`` only. Where RAdam takes an un-adapted momentum-SGD step
    (:math:`\rho_t \le 5`, the first 5 steps for ``beta`` in [0.9, 0.9995]) this policy, which can
    only scale Adam's own step, uses 0: those steps update the moments but not the parameters.
    With ``beta <= 0.6``, :math:`\rho_\infty \le 4` and the scale stays 0 (RAdam is then SGD).

    References:
        Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020.
    """

    name: ClassVar[str] = "radam"

    def update(
        self,
        state: dict[str, Tensor],
        step: Tensor,
        beta: Tensor,
        stats: Statistics | None,
        *,
        bias_corrected: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        rho_inf, rho_t = _rho(step, beta)
        rect = torch.sqrt(
            ((rho_t - 4) * (rho_t - 2) * rho_inf) / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )
        scale = torch.where(rho_t > 5.0, rect, torch.zeros_like(rect))
        return torch.nan_to_num(scale, nan=0.0).float(), {}


@dataclass(frozen=True)
class UntunedLinear(WarmupPolicy):
    r"""Untuned linear warm-up (Ma & Yarats 2021): :math:`s_t = \min(1,\ t(1-\beta)/2)`.

    References:
        Ma & Yarats, On the Adequacy of Untuned Warmup for Adaptive Optimization, AAAI 2021.
    """

    name: ClassVar[str] = "untuned_linear"

    def update(
        self,
        state: dict[str, Tensor],
        step: Tensor,
        beta: Tensor,
        stats: Statistics | None,
        *,
        bias_corrected: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        step, beta = step.double(), beta.double()
        return torch.clamp(step * (1 - beta) / 2, max=1.0).float(), {}


@dataclass(frozen=True)
class UntunedExponential(WarmupPolicy):
    r"""Untuned exponential warm-up (Ma & Yarats 2021): :math:`s_t = 1 - \exp(-(1-\beta)t)`.

    It never reaches exactly 1 in real arithmetic; in float32 it does after about
    :math:`17/(1-\beta)` steps, when the optimizer stops tracking it.

    References:
        Ma & Yarats, On the Adequacy of Untuned Warmup for Adaptive Optimization, AAAI 2021.
    """

    name: ClassVar[str] = "untuned_exponential"

    def update(
        self,
        state: dict[str, Tensor],
        step: Tensor,
        beta: Tensor,
        stats: Statistics | None,
        *,
        bias_corrected: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        step, beta = step.double(), beta.double()
        return (-torch.expm1(-(1 - beta) * step)).float(), {}


@dataclass(frozen=True)
class Linear(WarmupPolicy):
    r"""Linear warm-up over a fixed number of steps: :math:`s_t = \min(1,\ t/N)`.

    Args:
        warmup_steps (int): :math:`N`, at least 1.
    """

    warmup_steps: int = 1000
    name: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int):
            raise TypeError(f"warmup_steps must be an int, got {type(self.warmup_steps).__name__}")
        if self.warmup_steps < 1:
            raise ValueError(f"Invalid warmup_steps value: {self.warmup_steps} (must be >= 1)")

    def update(
        self,
        state: dict[str, Tensor],
        step: Tensor,
        beta: Tensor,
        stats: Statistics | None,
        *,
        bias_corrected: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return torch.clamp(step / float(self.warmup_steps), max=1.0).float(), {}


@dataclass(frozen=True)
class Constant(WarmupPolicy):
    """Scale 1 from the first step: no warm-up, but the warm-up machinery stays on (for tests).

    ``warmup=None`` is the real "off" switch: it skips all warm-up work and follows torch's
    own step bit for bit.
    """

    name: ClassVar[str] = "constant"

    def update(
        self,
        state: dict[str, Tensor],
        step: Tensor,
        beta: Tensor,
        stats: Statistics | None,
        *,
        bias_corrected: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return torch.ones_like(step), {}


POLICIES: dict[str, type[WarmupPolicy]] = {
    cls.name: cls
    for cls in (Measured, RAdamRectification, UntunedLinear, UntunedExponential, Linear, Constant)
}


def resolve_policy(warmup: WarmupPolicy | str | None) -> WarmupPolicy | None:
    """Turn the ``warmup=`` argument into a policy object (``None`` and ``"none"`` mean off)."""
    if warmup is None:
        return None
    if isinstance(warmup, WarmupPolicy):
        return warmup
    if isinstance(warmup, str):
        if warmup == "none":
            return None
        if warmup not in POLICIES:
            names = ", ".join(repr(n) for n in ["none", *POLICIES])
            raise ValueError(f"Invalid warmup policy name: {warmup!r} (expected one of {names})")
        return POLICIES[warmup]()
    raise TypeError(
        f"warmup must be a WarmupPolicy, a policy name or None, got {type(warmup).__name__}"
    )
