r"""Pure statistics of the second-moment estimate (tensor in, tensor out; no state, no host syncs).

Notation (one coordinate; see ``docs/warmup.md`` for the derivations): ``x_t = g_t^2``,
``v_t = beta v_{t-1} + (1 - beta) x_t`` with ``v_0 = 0`` (torch's ``exp_avg_sq`` / ``square_avg``),
and the bias-corrected estimate ``v̂_t = v_t / (1 - beta^t)``, a weighted mean of ``x_1 .. x_t`` with
weights ``w_i = (1 - beta) beta^(t-i) / (1 - beta^t)`` that sum to one.

The closed forms work on 1-D float tensors holding one value per parameter tensor (or per group);
the fresh-ratio pass works on flat ``[rows, BLOCK]`` buffers holding the measured coordinates of
many tensors at once (``pack_blocks``) and ends in one segment sum per tensor. Either way one call
serves any number of tensors with a constant number of ATen ops.
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
    "window_start",
    "take_window",
    "BLOCK",
    "pack_blocks",
    "fresh_ratio_row_sums",
    "update_row_sums",
    "segment_sums",
    "POOLING",
]

# Denominator floor for g^2 / v̂: keeps 0/0 (a coordinate that has never seen a gradient and
# gets none now) at 0 instead of NaN. Far below any squared gradient worth measuring.
_TINY = 1e-30


@dataclass(frozen=True)
class Statistics:
    """What the optimizer measured this step, per unit (1-D float32, same device).

    Two measurements, each present when the policy's :class:`~warmopt.policies.MeasurementSpec`
    asks for it (``None`` otherwise).

    The fresh ratio (``spec.fresh_ratio``):

    Attributes:
        sum_r: sum over coordinates of the fresh ratio ``g_t^2 / v̂_{t-1}`` (capped, see
            :func:`fresh_ratio_sums`).
        sum_r2: sum over coordinates of its square.
        count: number of real coordinates summed (``numel``; twice that for complex tensors).
        valid: 1.0 where the measurement counts (``step >= 2``: at ``step = 1`` there is no
            ``v̂_{t-1}`` to compare with; also 0 on a GradScaler step with inf/NaN gradients).

    The relative step (``spec.update``), on each tensor's first ``spec.update_window``
    coordinates (:func:`update_row_sums`):

    Attributes:
        leader: 1.0 for a tensor whose relative step is measured against its own size (at least
            two dimensions and a non-zero norm), 0.0 for the others (vectors, scalars, tensors
            at zero).
        update_ratio: the relative step ``||lr * d|| / ||p||`` of a leader (float64; ``lr * d``
            the update torch is about to apply at the group's full ``lr``, ``p`` the parameters
            before it), 0 for the others. A unit of several tensors (group or global
            granularity) takes its largest: the unit's scale must keep every matrix in it under
            the cap, and a ratio of pooled sums would let one large matrix hide a small one that
            moves far.
    """

    sum_r: Tensor | None = None
    sum_r2: Tensor | None = None
    count: Tensor | None = None
    valid: Tensor | None = None
    leader: Tensor | None = None
    update_ratio: Tensor | None = None

    def merged(self, other: Statistics) -> Statistics:
        """The fields of both (``other``'s where both have one)."""
        return Statistics(**{**_present(self), **_present(other)})


def _present(stats: Statistics) -> dict[str, Tensor]:
    return {k: v for k, v in vars(stats).items() if v is not None}


#: How each field of :class:`Statistics` pools over the tensors of a unit (group/global
#: granularity): the sums add up (over the tensors that count, ``valid``), the flags are set
#: if any tensor's is, and the relative step is the largest of the unit's leaders.
POOLING = {
    "sum_r": "valid", "sum_r2": "valid", "count": "valid", "valid": "amax",
    "leader": "amax", "update_ratio": "amax",
}  # fmt: skip


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
    the same windows. Returns int64, one entry per tensor (:func:`window_start` is the same
    formula for one tensor, on the host).
    """
    n = numel.to(step.dtype)
    sweep = torch.ceil(n / size)
    j = torch.remainder(torch.floor(step / every), sweep)
    return torch.minimum(j * size, n - size).long()


def window_start(step: int, numel: int, size: int, every: int = 1) -> int:
    """:func:`window_starts` for one tensor, in Python integers (``numel > size``)."""
    sweep = -(-numel // size)
    return min((step // every) % sweep * size, numel - size)


def take_window(t: Tensor, index: Tensor) -> Tensor:
    """The coordinates ``index`` (``arange(size) + start`` on ``t``'s device) of flattened ``t``:
    a gather of ``size`` elements, no pass over ``t``."""
    return t.reshape(-1).index_select(0, index)


#: Coordinates per row of the flat buffers the statistics run on: every tensor's coordinates fill
#: whole rows (the last one zero-padded), so a row sum is a per-tensor partial sum and one
#: segment reduction over rows (not coordinates) gives the per-tensor sums.
BLOCK = 256


def pack_blocks(
    pieces: list[Tensor], pads: list[Tensor | None], out: Tensor | None = None
) -> Tensor:
    """The 1-D ``pieces``, each followed by its zero ``pad`` (to a multiple of ``BLOCK``), as one
    ``[rows, BLOCK]`` matrix: one copy of the pieces (``torch.cat``), in float32 (float64 if a
    piece is; narrower dtypes are widened, the statistics need the range), into ``out`` if
    given (a ``[rows, BLOCK]`` buffer of that dtype)."""
    parts: list[Tensor] = []
    for piece, pad in zip(pieces, pads):
        parts.append(piece)
        if pad is not None:
            parts.append(pad)
    if out is not None:
        torch.cat(parts, out=out.view(-1))
        return out
    flat = torch.cat(parts)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return flat.view(-1, BLOCK)


def fresh_ratio_row_sums(
    g: Tensor,
    v: Tensor,
    cap: Tensor,
    inv_grad_scale_sq: Tensor | None = None,
    p: Tensor | None = None,
    coupled_decay: float = 0.0,
) -> dict[str, Tensor]:
    r"""Row sums of the fresh ratio in units of :math:`b = 1-\beta^{t-1}`, and of its square.

    ``g``, ``v`` (and ``p``) are ``[rows, BLOCK]`` matrices (:func:`pack_blocks`) of gradients,
    second moments :math:`v_{t-1}` (before this step's update) and parameters; ``cap`` holds
    :math:`1/(w_t b)` per row (``[rows, 1]``). Per coordinate

    .. math::
        q = \min\Bigl(\frac{x}{\max(v_{t-1},\ \mathrm{tiny})},\ \frac{1}{w_t\,b}\Bigr),
        \qquad r = b\,q,

    with :math:`x = g^2` (times ``inv_grad_scale_sq`` for gradients still carrying a
    GradScaler's scale; :math:`x = (g + c\,p)^2` with ``coupled_decay`` :math:`c`, as torch
    squares the L2-decayed gradient). Zero padding gives :math:`q = 0`.

    ``g`` and ``v`` are scratch (packed copies): the ratio is computed in place, in ``g``, so a
    step allocates no buffer of their size. The sums are named as the fields of
    :class:`Statistics` they become (after the per-tensor sum and the factor :math:`b` or
    :math:`b^2`, ``SUM_POWERS``): a new per-tensor sum over the same coordinates is one more
    entry here (computed before the ratio overwrites ``g`` and ``v``), one more field there.
    """
    sums: dict[str, Tensor] = {}
    tiny = max(_TINY, torch.finfo(g.dtype).tiny)
    x = g
    if coupled_decay != 0.0 and p is not None:
        if inv_grad_scale_sq is not None:
            x.mul_(inv_grad_scale_sq.reshape(()).sqrt().to(g.dtype))
        x.add_(p, alpha=coupled_decay)
        x.mul_(x)
    else:
        x.mul_(x)
        if inv_grad_scale_sq is not None:
            x.mul_(inv_grad_scale_sq.reshape(()).to(g.dtype))
    # min(x b / v, 1/w) is the capped ratio r (the two branches of the max in the docstring of
    # fresh_ratio_sums swap exactly where x b / v = 1/w); in units of r/b the cap is 1/(w b).
    # max(v, tiny) turns 0/0 (never a gradient, none now) into 0.
    x.div_(v.clamp_min_(tiny)).clamp_max_(cap)
    sums["sum_r"] = x.sum(1)
    sums["sum_r2"] = torch.linalg.vector_norm(x, 2, dim=1).square()
    return sums


#: how each row sum of fresh_ratio_row_sums becomes a Statistics field: times b ** power
SUM_POWERS = {"sum_r": 1, "sum_r2": 2}


def update_row_sums(
    d: Tensor, p: Tensor
) -> dict[str, Tensor]:
    r"""Row sums of :math:`d^2` and :math:`p^2` (``[rows, BLOCK]`` matrices: the unit-lr update
    and the parameters, zero padded): ``step_sq`` before its factor :math:`\mathrm{lr}^2`, and
    ``param_sq``."""
    return {
        "step_sq": torch.linalg.vector_norm(d, 2, dim=1).square(),
        "param_sq": torch.linalg.vector_norm(p, 2, dim=1).square(),
    }


def adam_update_(
    g: Tensor,
    m: Tensor,
    v: Tensor,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    bias1: Tensor,
    bias2: Tensor,
    vmax: Tensor | None = None,
) -> Tensor:
    r"""Adam's update at unit learning rate, computed ahead of torch, in place in ``m``.

    ``g`` is the gradient torch's moments are built from (sign, loss scale and coupled decay
    applied), ``m``, ``v`` (and ``vmax`` for amsgrad) the moments *before* this step
    (``[rows, BLOCK]`` scratch copies, overwritten); ``bias1``, ``bias2`` hold
    :math:`1-\beta_1^t` and :math:`1-\beta_2^t` per row (``[rows, 1]``):

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2,
        \quad d = \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}.
    """
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    if vmax is not None:
        torch.maximum(vmax, v, out=v)
    den = v.div_(bias2).sqrt_().add_(eps)
    return m.div_(bias1).div_(den)


def rmsprop_update_(
    g: Tensor,
    v: Tensor,
    num: Tensor,
    *,
    alpha: float,
    eps: float,
    mode: str,
    momentum: float = 0.0,
    grad_avg: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    r"""RMSprop's update at unit learning rate, ahead of torch, in place in ``num``.

    ``v`` holds ``square_avg`` before this step (scratch); torch's denominator is
    :math:`\sqrt{v_t} + \epsilon` with :math:`v_t = \alpha v_{t-1} + (1-\alpha) g^2` (no bias
    correction), centred :math:`\sqrt{v_t - a_t^2} + \epsilon` with ``grad_avg``'s
    :math:`a_t = \alpha a_{t-1} + (1-\alpha) g`. ``mode`` says what the numerator ``num``
    holds: ``"average"`` -- warmopt's running average :math:`\bar g_t` of the gradients,
    already updated (left unchanged), divided by ``bias`` (:math:`1 - 0.9^t` per row);
    ``"momentum"`` -- a copy of torch's momentum buffer before this step (overwritten), giving
    :math:`\mu b + g/\mathrm{den}`.
    """
    v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
    if grad_avg is not None:
        grad_avg.lerp_(g, 1 - alpha)
        v.addcmul_(grad_avg, grad_avg, value=-1)
    den = v.sqrt_().add_(eps)
    if mode == "momentum":
        return num.mul_(momentum).addcdiv_(g, den)
    assert bias is not None
    return torch.div(num, bias).div_(den)  # num is the running average itself: not in place


def fresh_ratio_sums(
    grads: list[Tensor],
    sq_avgs: list[Tensor],
    prev_bias_correction: Tensor,
    newest_weight: Tensor,
    inv_grad_scale_sq: Tensor | None = None,
    params: list[Tensor] | None = None,
    coupled_decay: float = 0.0,
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

    All tensors go through one flat pass (:func:`pack_blocks`, :func:`fresh_ratio_row_sums`, one
    segment sum over rows): a fixed number of ops for any number and shapes of tensors. The
    ratio is computed in float32 (float64 for float64 tensors); the sums come back as float32.

    Args:
        grads: gradients (one device; real views of complex tensors).
        sq_avgs: :math:`v_{t-1}` for the same tensors.
        prev_bias_correction: :math:`1-\beta^{t-1}` per tensor, 1-D float32 on their device.
        newest_weight: :math:`w_t` per tensor, 1-D float32 on their device.
        inv_grad_scale_sq: ``1/grad_scale**2`` when the gradients still carry a GradScaler's scale:
            a one-element tensor, 0-d or 1-D (torch's fused step takes ``grad_scale`` in both
            shapes).
        params: the parameters, needed only with ``coupled_decay``.
        coupled_decay: ``c`` when the second moment is built from ``g + c p`` (coupled, L2-style
            weight decay, see ``Algorithm.coupled_decay``): the ratio is then of that sum, as
            torch squares it.

    Returns:
        ``(sum_r, sum_r2)``: 1-D float32 tensors, one entry per tensor.
    """
    n = len(grads)
    device = grads[0].device
    lengths = [t.numel() for t in grads]
    pads = [_zeros(-k % BLOCK, device) for k in lengths]
    rows = torch.tensor(
        [i for i, k in enumerate(lengths) for _ in range(-(-k // BLOCK))], dtype=torch.long
    ).to(device)
    g = pack_blocks([t.reshape(-1) for t in grads], pads)
    v = pack_blocks([t.reshape(-1) for t in sq_avgs], pads)
    p = None
    if params is not None and coupled_decay != 0.0:
        p = pack_blocks([t.reshape(-1) for t in params], pads)
    b = prev_bias_correction.to(g.dtype)
    cap = (1.0 / (newest_weight.to(g.dtype) * b))[rows].unsqueeze(1)
    sums = segment_sums(
        fresh_ratio_row_sums(g, v, cap, inv_grad_scale_sq, p, coupled_decay), rows, n
    )
    return sums["sum_r"] * b.float(), sums["sum_r2"] * b.float().square()


def segment_sums(row_sums: dict[str, Tensor], rows: Tensor, n: int) -> dict[str, Tensor]:
    """Per-tensor float32 sums from row sums (``rows[k]``: the tensor row ``k`` belongs to): one
    ``index_add_`` for all of them."""
    names = list(row_sums)
    stacked = torch.stack([row_sums[k] for k in names]).float()
    out = stacked.new_zeros(len(names), n).index_add_(1, rows, stacked)
    return dict(zip(names, out.unbind(0)))


def _zeros(k: int, device: torch.device) -> Tensor | None:
    return torch.zeros(k, device=device) if k else None
