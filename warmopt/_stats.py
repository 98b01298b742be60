r"""Pure statistics of the second-moment estimate (tensor in, tensor out; no state, no host syncs).

Notation (one coordinate; see ``docs/warmup.md`` for the derivations): ``x_t = g_t^2``,
``v_t = beta v_{t-1} + (1 - beta) x_t`` with ``v_0 = 0`` (torch's ``exp_avg_sq`` / ``square_avg``),
and the bias-corrected estimate ``v̂_t = v_t / (1 - beta^t)``, a weighted mean of ``x_1 .. x_t`` with
weights ``w_i = (1 - beta) beta^(t-i) / (1 - beta^t)`` that sum to one.

Everything here works on 1-D float tensors holding one value per parameter tensor (or per group),
so one call serves any number of parameters with a constant number of ATen ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Statistics",
    "effective_sample_size",
    "asymptotic_sample_size",
    "newest_weight",
    "fresh_ratio_sums",
    "window_starts",
    "take_window",
]

#: Tensors (or windows) of at most this many elements that share a shape are measured stacked on
#: the CPU (``fresh_ratio_sums(stacked=True)``): for biases and norms, copying them costs less
#: than the per-tensor kernel dispatch of six foreach passes it saves. Not for windows of 4096:
#: 200 of them stacked are fresh multi-MB buffers every step, slower than the foreach passes (an
#: ad-hoc A/B of 0, 1024 and 4096 on the layouts of ``benchmarks.step_cost``, warming fused Adam
#: on 400 small tensors: 20.3 / 18.6 / 23.3 ms; on the Transformer 10.8 / 10.1 / 9.9 ms).
STACK_MAX_NUMEL = 1024

# Denominator floor for g^2 / v̂: keeps 0/0 (a coordinate that has never seen a gradient and
# gets none now) at 0 instead of NaN. Far below any squared gradient worth measuring.
_TINY = 1e-30


@dataclass(frozen=True)
class Statistics:
    """What the optimizer measured this step, per unit (1-D float32, same device).

    Attributes:
        sum_r: sum over coordinates of the fresh ratio ``g_t^2 / v̂_{t-1}`` (capped, see
            :func:`fresh_ratio_sums`).
        sum_r2: sum over coordinates of its square.
        count: number of real coordinates summed (``numel``; twice that for complex tensors).
        valid: 1.0 where the measurement counts (``step >= 2``: at ``step = 1`` there is no
            ``v̂_{t-1}`` to compare with; also 0 on a GradScaler step with inf/NaN gradients).
    """

    sum_r: Tensor
    sum_r2: Tensor
    count: Tensor
    valid: Tensor


def _floating(step: Tensor) -> Tensor:
    """Step counts as floats, keeping float64 where given (the policies compute in float64)."""
    return step if step.is_floating_point() else step.to(torch.float32)


def effective_sample_size(step: Tensor, beta: Tensor | float) -> Tensor:
    r"""Kish effective sample size of the bias-corrected EMA after ``step`` updates.

    .. math::
        n_\mathrm{eff}(t) = \frac{1}{\sum_i w_i^2}
        = \frac{(1+\beta)(1-\beta^t)}{(1-\beta)(1+\beta^t)}

    It is 1 at ``t = 1``, about ``t`` while ``t << 1/(1-beta)`` and tends to ``(1+beta)/(1-beta)``
    (RAdam's :math:`\rho_\infty`). ``step = 0`` gives 0. ``beta = 0`` gives 1 for every ``t >= 1``.
    """
    step = _floating(step)
    beta_t = torch.as_tensor(beta, dtype=step.dtype, device=step.device)
    bt = beta_t**step
    return (1 + beta_t) * (1 - bt) / ((1 - beta_t) * (1 + bt))


def asymptotic_sample_size(beta: Tensor | float) -> Tensor:
    r""":math:`n_\mathrm{eff}(\infty) = (1+\beta)/(1-\beta) = 2/(1-\beta) - 1` (``rho_inf``)."""
    beta_t = torch.as_tensor(beta, dtype=torch.float64)
    return (1 + beta_t) / (1 - beta_t)


def newest_weight(step: Tensor, beta: Tensor | float) -> Tensor:
    r"""Weight of the newest sample in v̂_t: :math:`w_t = (1-\beta)/(1-\beta^t)` (1 at ``t = 1``)."""
    step = _floating(step)
    beta_t = torch.as_tensor(beta, dtype=step.dtype, device=step.device)
    return (1 - beta_t) / (1 - beta_t**step)


def window_starts(step: Tensor, numel: Tensor, size: int, every: int = 1) -> Tensor:
    """First coordinate of the window measured at ``step`` for tensors of ``numel`` coordinates.

    The windows ``[j size, (j+1) size)``, ``j = floor(step / every) mod W``,
    ``W = ceil(numel / size)``, tile each tensor; the last one is moved back to end at ``numel`` so
    every window is full. Consecutive measurements (``every`` steps apart) take consecutive windows
    and a sweep covers the tensor. Keyed on the tensor's own step count, so a resumed run measures
    the same windows; computed on the device (no host read). Returns int64, one entry per tensor.
    """
    n = numel.to(step.dtype)
    sweep = torch.ceil(n / size)
    j = torch.remainder(torch.floor(step / every), sweep)
    return torch.minimum(j * size, n - size).long()


def take_window(t: Tensor, index: Tensor) -> Tensor:
    """The coordinates ``index`` (``arange(size) + start`` on ``t``'s device) of flattened ``t``:
    a gather of ``size`` elements, no pass over ``t``."""
    return t.reshape(-1).index_select(0, index)


def fresh_ratio_sums(
    grads: list[Tensor],
    sq_avgs: list[Tensor],
    prev_bias_correction: Tensor,
    newest_weight: Tensor,
    inv_grad_scale_sq: Tensor | None = None,
    params: list[Tensor] | None = None,
    coupled_decay: float = 0.0,
    stacked: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Per-tensor sums of the fresh ratio :math:`r = g_t^2 / \hat v_{t-1}` and of :math:`r^2`.

    ``sq_avgs`` hold :math:`v_{t-1}` *before* this step's update; ``prev_bias_correction`` holds
    :math:`b = 1-\beta^{t-1}` and ``newest_weight`` :math:`w_t` for each tensor (1-D float32). The
    ratio is capped at :math:`1/w_t`, the value it takes when :math:`\hat v_{t-1}` carried no
    information (a coordinate that never had a gradient), which keeps the sums finite without a
    branch:

    .. math::
        r = \frac{x}{\max(\hat v_{t-1},\ w_t x)} = \frac{b\,x}{\max(v_{t-1},\ b\,w_t\,x)}.

    Under stationary gradients with kurtosis :math:`\kappa = E[g^4]/E[g^2]^2` and
    :math:`\hat v_{t-1}` resting on :math:`n` effective samples, to first order
    :math:`E[r] \approx 1 + (\kappa-1)/n` (Jensen: :math:`E[1/\hat v] > 1/E[\hat v]`) and
    :math:`E[(r-1)^2] \approx \kappa - 1`. When the gradients grow faster than :math:`\hat v`
    follows, :math:`E[r]` rises further: that excess is the drift signal.

    The ratio is computed in the bucket's own dtype (three significant digits in bfloat16 are
    plenty for a statistic); the sums come back as float32.

    Args:
        grads: gradients of one bucket (same device and dtype; real views of complex tensors).
        sq_avgs: :math:`v_{t-1}` for the same tensors.
        prev_bias_correction: :math:`1-\beta^{t-1}` per tensor, 1-D float32 on the bucket's device.
        newest_weight: :math:`w_t` per tensor, 1-D float32 on the bucket's device.
        inv_grad_scale_sq: ``1/grad_scale**2`` when the gradients still carry a GradScaler's scale:
            a one-element tensor, 0-d or 1-D (torch's fused step takes ``grad_scale`` in both
            shapes).
        params: the parameters, needed only with ``coupled_decay``.
        coupled_decay: ``c`` when the second moment is built from ``g + c p`` (coupled, L2-style
            weight decay, see ``Algorithm.coupled_decay``): the ratio is then of that sum, as
            torch squares it (one more temporary and two more passes).
        stacked: the tensors all have the same shape: stack them into one tensor with a row per
            tensor and run the same passes on it, summing per row. The same numbers (up to the
            order of the float additions) with one kernel per pass instead of one per tensor:
            cheaper on the CPU, where each tensor of a foreach op is a kernel of its own, for
            tensors small enough (``STACK_MAX_NUMEL``) that copying them costs less than that.

    Returns:
        ``(sum_r, sum_r2)``: 1-D float32 tensors, one entry per tensor.
    """
    dtype = grads[0].dtype
    tiny = max(_TINY, torch.finfo(dtype).tiny)
    if inv_grad_scale_sq is not None:
        inv_grad_scale_sq = inv_grad_scale_sq.reshape(())  # foreach ops take 0-d scalars only
    # min(x b / v, 1/w) is the capped ratio above (the two branches of the max swap exactly where
    # x b / v = 1/w); in units of r/b the cap is 1/(w b). max(v, tiny) turns 0/0 (never a
    # gradient, none now) into 0. Six foreach passes; two temporaries (x and max(v, tiny)).
    cap = (1.0 / (newest_weight * prev_bias_correction)).to(dtype)
    caps: list[Tensor]
    if stacked:
        k = len(grads)
        grads = [torch.stack(grads).reshape(k, -1)]
        sq_avgs = [torch.stack(sq_avgs).reshape(k, -1)]
        if params is not None and coupled_decay != 0.0:
            params = [torch.stack(params).reshape(k, -1)]
        caps = [cap.reshape(k, 1)]
    else:
        caps = list(cap.unbind(0))
    if coupled_decay != 0.0 and params is not None:
        g = (
            torch._foreach_mul(grads, inv_grad_scale_sq.sqrt().to(dtype))
            if inv_grad_scale_sq is not None
            else torch._foreach_mul(grads, 1.0)
        )
        torch._foreach_add_(g, params, alpha=coupled_decay)
        x = torch._foreach_mul(g, g)
        del g
    else:
        x = torch._foreach_mul(grads, grads)
        if inv_grad_scale_sq is not None:
            torch._foreach_mul_(x, inv_grad_scale_sq.to(dtype))
    torch._foreach_div_(x, torch._foreach_maximum(sq_avgs, tiny))
    torch._foreach_minimum_(x, caps)  # x now holds r / b
    if stacked:
        sum_q = x[0].sum(1).float()
        norm_q = torch.linalg.vector_norm(x[0], 2, dim=1).float()
    else:
        sum_q = torch.stack(torch._foreach_norm(x, 1)).float()
        norm_q = torch.stack(torch._foreach_norm(x, 2)).float()
    return sum_q * prev_bias_correction, (norm_q * prev_bias_correction) ** 2
