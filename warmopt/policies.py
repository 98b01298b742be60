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
        fresh_ratio: whether the statistics include the fresh-ratio sums (``sum_r`` ...), on
            windows of ``sample`` coordinates that sweep each tensor.
        update: whether they include the relative step (``update_ratio``, ``leader``),
            on each tensor's first ``update_window`` coordinates (all with ``None``).
        vectors_lead: measure vectors and scalars against their own norm too (else only tensors
            of two or more dimensions lead, and the policy decides what the others do).
        buffers: window-sized state the measure stage keeps under ``warmup_<name>`` (kept when
            a checkpoint is loaded).
        watch: for a policy that can fall, the longest spacing of measured steps once every
            scale is 1: the spacing doubles (1, 2, 4, ...) up to ``watch`` while every measured
            step finds every scale at 1, the steps between are torch's own, and a measured scale
            below 1 brings back every step (1: measure every step).
    """

    statistics: bool = False
    sample: int | None = None
    every: int = 1
    can_fall: bool = False
    pooling: dict[str, str] = field(default_factory=dict)
    summary: tuple[str, ...] = ()
    fresh_ratio: bool = True
    update: bool = False
    update_window: int | None = None
    vectors_lead: bool = False
    buffers: tuple[str, ...] = ()
    watch: int = 1


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
    r"""The default: hold each tensor's step to ``max_update`` of its size while it is too large.

    Before each measured update the optimizer measures, per parameter tensor, the step torch is
    about to apply at the group's full learning rate, relative to the tensor (on its first
    ``sample`` coordinates, see :func:`warmopt._measure.measure_update`):

    .. math::
        \hat u_t = \frac{\lVert \mathrm{lr}\cdot d_t \rVert}{\lVert p_{t-1} \rVert},\qquad
        c_t = \min\Bigl(1,\ \frac{U}{\hat u_t}\Bigr),\qquad
        s_t = c_t\ \ (\texttt{rewarm}),\quad s_t = \max(s_{t-1},\ c_t)\ \ (\text{the ramp}),

    with :math:`d_t = \hat m_t/(\sqrt{\hat v_t} + \epsilon)` for Adam/AdamW (this step's moments,
    ``amsgrad``, ``maximize``, coupled decay and a GradScaler's scale as torch applies them) and
    :math:`d_t = \bar g_t/(\sqrt{v_t} + \epsilon)` for RMSprop (torch's own denominator, without
    bias correction, so its 10x first step is measured as it is; :math:`\bar g_t` the average of
    the gradients at rate 0.9 over the measured steps, or the momentum buffer with
    ``momentum > 0``: the part of the step that keeps its direction). :math:`U` = ``max_update``.

    * **It knows the learning rate.** :math:`\hat u_t \propto \mathrm{lr}`: where the full step
      is already smaller than :math:`U` the scale is 1 from the first step (no step is lost);
      at a large ``lr`` it starts at :math:`U/\hat u_1` and rises as the step shrinks, for as
      long as that takes -- a learning rate that stays too large keeps the scale below 1.
    * **It sees the statistics settle.** On the first step :math:`d = \mathrm{sign}(g)`, the
      largest a step can be (every coordinate moves by ``lr``); as :math:`\hat m` averages over
      steps its noise cancels and as :math:`\hat v` gathers samples the step shrinks. A
      :math:`\hat v` resting on few samples, heavy tails and a :math:`\hat v` lagging growing
      gradients all show up as a large :math:`\hat u`.
    * **Vectors follow the matrices.** Biases, normalisation gains, scalars and tensors at zero
      have no size to measure a step against (a bias that starts at 0 would read every step as
      a 100 % change); with ``follow_vectors`` (default) they take the median :math:`c_t` of the
      tensors that lead (at least two dimensions, non-zero), 1 if there are none.
    * **The cap holds whenever the step is too large** (``rewarm=True``, the default): the
      scale is this step's :math:`c_t`, so a step that grows again -- late in a warm-up at a
      constant ``lr`` beyond Adam's stable range, or after a burst of large gradients -- is
      capped again. Once every scale is 1 the optimizer *watches*: it measures at doubling
      intervals (1, 2, 4, ... steps apart, at most ``watch_every``), the steps between are
      torch's own, and a measured scale below 1 brings back every step. A stationary stream
      whose steps stay below :math:`U` is never capped; one whose steps do not is capped at
      :math:`U` on each of them.
    * **The ramp** (``rewarm=False``): the running maximum makes the scale rise only, and the
      warm-up ends the first time every scale is 1; from then on the step is torch's own and
      nothing is measured. The price: a step that grows again is not capped.
    * **Pooled units take their largest step.** Under ``granularity="group"`` or ``"global"``
      a unit's :math:`\hat u_t` is the largest of its leading tensors', so its one scale keeps
      each of them under :math:`U`.

    :math:`U = 0.02` was chosen on the benchmark's tuning tasks (``python -m
    benchmarks.quality --split tuning``, with the ramp; 0.01 and 0.03 are its ablations); the
    cap replaced the ramp as the default on the tuning tasks and the demo (see ``docs/warmup.md``,
    where the evidence and the fresh held-out check are). :math:`U` is of the order of
    AdamW's equilibrium angular update :math:`\sqrt{2\,\mathrm{lr}\cdot\mathrm{wd}}` at common
    settings (0.014 at lr 1e-3, wd 0.1). The derivation and the evidence are in
    ``docs/warmup.md``.

    Two further factors of the earlier policy are kept as options (both off by default; with
    ``max_update=None, confidence=True, drift=True, rewarm=False`` the policy is that earlier
    one, whose
    scale does not depend on the learning rate):

    * ``confidence``: :math:`s_t \le c^\mathrm{prec}_t = \max\bigl(c^\mathrm{prec}_{t-1},
      \min(1, e^\star/e_t)\bigr)`, the share of the step whose sampling error stays within
      ``tol``: :math:`e_t = \tfrac12\sqrt{K_t/n_\mathrm{eff}(t)}` with
      :math:`n_\mathrm{eff}(t) = (1+\beta)(1-\beta^t)/((1-\beta)(1+\beta^t))` effective samples and
      :math:`K_t` the measured excess kurtosis of :math:`g^2` (from the spread of the fresh ratio
      :math:`r = g_t^2/\hat v_{t-1}` across the tensor, averaged over steps with weights
      :math:`n_\mathrm{eff}(t-1)`, the prior ``prior_kurtosis`` counted as one sample),
      :math:`e^\star = \max(\mathrm{tol},\ \sqrt2\cdot\tfrac12\sqrt{K_t/n_\mathrm{eff}(\infty)})`.
    * ``drift``: :math:`s_t \mathrel{*}= \min\bigl(1, (1+\mathrm{tol})\sqrt{(1+w_t\delta_t)/
      (1+\delta_t)}\bigr)`, the correction of a :math:`\hat v` that lags growing gradients:
      :math:`\delta_t = \max(0, D_t - 2\sigma_D)` with :math:`D_t` an EMA (0.9) of
      :math:`\bar r - 1 - K_t/n_\mathrm{eff}(t-1)` and :math:`\sigma_D^2 = \max(K_t/N,\ V_t)
      \cdot 0.1/1.9`, :math:`V_t` the EMA of the squared deviations of that excess from
      :math:`D_{t-1}` -- its measured fluctuation, so that a heavy-tailed outlier (whose
      kurtosis is not finite) does not count as lag; :math:`w_t = (1-\beta)/(1-\beta^t)`.
    * With ``max_update=None`` on RMSprop the scale carries :math:`\sqrt{1-\alpha^t}`, which
      removes its missing bias correction (with ``max_update`` that inflated step is measured).

    Args:
        max_update (float or None, optional): :math:`U`, the largest step, relative to the
            tensor's size, taken while warming (default: 0.02). ``None`` drops the cap (then
            ``confidence`` or ``drift`` must be on).
        follow_vectors (bool, optional): vectors, scalars and tensors at zero take the median
            scale of the tensors with at least two dimensions (default: True; ``False`` measures
            them against their own size, an ablation).
        confidence (bool, optional): also limit the scale by the sampling error of
            :math:`1/\sqrt{\hat v}` (default: False).
        drift (bool, optional): also correct a lagging :math:`\hat v` (default: False).
        tol (float, optional): tolerated relative error of :math:`1/\sqrt{\hat v}` for
            ``confidence`` and ``drift`` (default: 0.1). Must be > 0.
        rewarm (bool, optional): let the scale fall again (no running maximum), so the cap holds
            whenever the step is too large (default: True; ``False`` is the ramp, whose warm-up
            ends the first time every scale is 1).
        kurtosis (bool, optional): measure :math:`K`; ``False`` fixes it at the Gaussian 2
            (default: True).
        prior_kurtosis (float, optional): :math:`K_0`, assumed before the first fresh-ratio
            measurement, with the weight of one sample (default: 32). Must be > 0.
        measure_every (int, optional): measure the fresh-ratio statistics of each tensor on every
            ``k``-th warming call of ``step()``, staggered across tensors (tensor number ``j`` on
            the calls ``c = j + 2 (mod k)``); the relative step is measured on every call
            (default: 1).
        watch_every (int, optional): with ``rewarm``, once every scale is 1, the longest spacing
            of measured steps; the spacing doubles from 1 up to it while every measured scale is 1
            (default: 16; 1 measures every step). With ``confidence`` or ``drift`` every step is
            measured.
        sample (int or None, optional): measure at most this many real coordinates per tensor:
            the first ones for the relative step, a window that sweeps the tensor (chosen by its
            step count) for the fresh ratio (default: 4096). ``None`` measures all of them.

    Example:
        >>> import torch, warmopt
        >>> w = torch.nn.Parameter(torch.full((4, 4), 0.05))
        >>> opt = warmopt.Adam([w], lr=0.01, warmup=warmopt.Measured(max_update=0.02))
        >>> w.grad = torch.ones(4, 4); opt.step()   # first step: every weight moves by lr
        >>> round(float(opt.warmup_scale[0][0]), 4)  # 0.02 * 0.05 / 0.01
        0.1

    References:
        Kosson, Messmer & Jaggi, Analyzing & Reducing the Need for Learning Rate Warmup in GPT
        Training, NeurIPS 2024 (angular updates). You et al., Large Batch Optimization for Deep
        Learning: Training BERT in 76 minutes, ICLR 2020 (a trust ratio per tensor). Liu et al.,
        On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020. Kish, Survey Sampling
        (1965), effective sample size. Wortsman et al., Stable and low-precision training for
        large-scale vision-language models, NeurIPS 2023 (``g^2/v̂`` as staleness).
    """

    max_update: float | None = 0.02
    follow_vectors: bool = True
    confidence: bool = False
    drift: bool = False
    tol: float = 0.1
    rewarm: bool = True
    kurtosis: bool = True
    prior_kurtosis: float = 32.0
    measure_every: int = 1
    sample: int | None = 4096
    watch_every: int = 16

    name: ClassVar[str] = "measured"
    needs_statistics: ClassVar[bool] = True
    state_init: ClassVar[dict[str, float]] = {
        "cap": 0.0,
        "update_ratio": 0.0,
        "confidence": 0.0,
        "kurtosis": 32.0,
        "evidence": 1.0,
        "drift": 0.0,
        "drift_var": 0.0,
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
        u = self.max_update
        if u is None:
            if not (self.confidence or self.drift):
                raise ValueError(
                    "Invalid max_update value: None (with confidence=False and drift=False "
                    "nothing would limit the step)"
                )
        elif isinstance(u, bool) or not (
            isinstance(u, (int, float)) and math.isfinite(u) and u > 0
        ):
            raise ValueError(f"Invalid max_update value: {u} (must be a finite float > 0, or None)")
        for arg in ("measure_every", "watch_every"):
            every = getattr(self, arg)
            if isinstance(every, bool) or not isinstance(every, int):
                raise TypeError(f"{arg} must be an int, got {type(every).__name__}")
            if every < 1:
                raise ValueError(f"Invalid {arg} value: {every} (must be >= 1)")
        size = self.sample
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError(f"sample must be an int or None, got {type(size).__name__}")
            if size < 2:
                raise ValueError(f"Invalid sample value: {size} (must be >= 2, or None)")

    @property
    def can_fall(self) -> bool:
        return self.rewarm

    @property
    def _fresh(self) -> bool:
        return self.confidence or self.drift

    @functools.cached_property
    def spec(self) -> MeasurementSpec:
        # A unit is as sure as its least sure tensor, as kurtotic as its tensors on average, as
        # drifting as its most drifting one, as far along as its least warmed one.
        capped = self.max_update is not None
        return MeasurementSpec(
            statistics=True,
            sample=self.sample if self._fresh else None,
            every=self.measure_every,
            can_fall=self.rewarm,
            pooling=dict(self.POOLING),
            summary=(*(("update_ratio",) if capped else ()),
                     *(("kurtosis", "drift") if self._fresh else ())),
            fresh_ratio=self._fresh,
            update=capped,
            update_window=self.sample,
            vectors_lead=not self.follow_vectors,
            buffers=("grad_avg",) if capped else (),
            # the fresh ratio's sweeping windows and running sums need every step
            watch=self.watch_every if self.rewarm and not self._fresh else 1,
        )

    #: how each number pools under granularity "group"/"global": the most cautious cap, the
    #: largest measured step, the least confidence, the mean kurtosis, the largest drift
    POOLING: ClassVar[dict[str, str]] = {
        "cap": "amin", "update_ratio": "amax", "confidence": "amin",
        "kurtosis": "mean", "evidence": "amin", "drift": "amax", "drift_var": "amax",
    }  # fmt: skip

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
        new_state = dict(state)
        scale = torch.ones_like(step, dtype=torch.float64)
        if self.max_update is not None:
            assert stats.update_ratio is not None and stats.leader is not None
            lead = stats.leader > 0
            ratio = stats.update_ratio.double()
            # a NaN step (a NaN gradient: torch poisons those coordinates) measures nothing: the
            # tensor keeps its numbers and is left out of the median
            blind = lead & ratio.isnan()
            ratio = torch.where(lead, ratio, 0.0)
            cap = torch.clamp(self.max_update / ratio, max=1.0)  # ratio 0: inf, clamped to 1
            median = torch.nanmedian(torch.where(lead, cap, math.nan))
            cap = torch.where(lead, cap, torch.where(median.isnan(), 1.0, median))
            cap = torch.where(blind, state["cap"].double(), cap)
            if not self.rewarm:
                cap = torch.maximum(state["cap"].double(), cap)
            ratio = torch.where(blind, state["update_ratio"].double(), ratio)
            new_state["cap"], new_state["update_ratio"] = cap.float(), ratio.float()
            scale = cap
        if self._fresh:
            fresh, fresh_state = self._fresh_ratio(state, step, beta, stats)
            new_state.update(fresh_state)
            if self.confidence:
                scale = torch.minimum(scale, fresh_state["confidence"].double())
            if self.drift:
                scale = scale * fresh
            if self.max_update is None and not bias_corrected:
                scale = scale * torch.sqrt(1 - beta.double() ** step.double())
        return scale.float(), new_state

    def _fresh_ratio(
        self, state: dict[str, Tensor], step: Tensor, beta: Tensor, stats: Statistics
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The confidence and the drift correction from the fresh-ratio sums; returns the
        correction (1 without ``drift``) and the new confidence, kurtosis, evidence, drift."""
        assert stats.sum_r is not None and stats.sum_r2 is not None
        assert stats.count is not None and stats.valid is not None
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
        drift, drift_var = state["drift"], state["drift_var"]
        correction = torch.ones_like(step)
        if self.drift:
            excess = m1 - 1 - kurt / n_prev
            rho = self.DRIFT_DECAY
            # the excess's own fluctuation: an outlier of a heavy-tailed stream moves the mean
            # ratio by far more than K/N says (its kurtosis is not finite), and is no lag
            drift_var = torch.where(
                counts, rho * drift_var + (1 - rho) * (excess - drift) ** 2, drift_var
            )
            drift = torch.where(counts, rho * drift + (1 - rho) * excess, drift)
            noise = torch.maximum(kurt / count, drift_var)
            sigma = torch.sqrt(noise * ((1 - rho) / (1 + rho)))
            delta = (drift - self.DRIFT_Z * sigma).clamp_min(0.0)
            w = one_minus / (1 - bt)  # _stats.newest_weight
            lag = torch.sqrt((1 + w * delta) / (1 + delta))
            correction = torch.clamp((1 + self.tol) * lag, max=1.0)

        err = 0.5 * torch.sqrt(kurt / n_now)
        target = torch.clamp(math.sqrt(2.0) * 0.5 * torch.sqrt(kurt / n_inf), min=self.tol)
        candidate = torch.clamp(target / err, max=1.0)
        confidence = candidate if self.rewarm else torch.maximum(state["confidence"], candidate)
        return correction, {
            "confidence": confidence.float(),
            "kurtosis": kurt.float(),
            "evidence": evidence.float(),
            "drift": drift.float(),
            "drift_var": drift_var.float(),
        }


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
