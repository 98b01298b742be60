"""The fast step (foreach / fused / single) agrees with the slow reference oracle."""

from __future__ import annotations

import pytest
import torch

import warmopt
from warmopt._device import DEVICE_PATH_ON_CPU
from warmopt._reference import ReferenceOptimizer

from .cases import CASE_MODES, MODES, Case, feed, twins

#: the first default: precision confidence and lag factor, no cap on the relative step
V1 = {"max_update": None, "confidence": True, "drift": True, "rewarm": False}
POLICIES = [
    warmopt.Measured(),
    warmopt.Measured(rewarm=True),
    warmopt.Measured(rewarm=False),
    warmopt.Measured(rewarm=True, max_update=10.0, watch_every=4),  # watches from step 1
    warmopt.Measured(max_update=0.002),  # the cap binds at these rates
    warmopt.Measured(max_update=0.002, sample=7),  # measured on the first 7 coordinates
    warmopt.Measured(max_update=0.002, follow_vectors=False),
    warmopt.Measured(max_update=0.002, confidence=True, drift=True, prior_kurtosis=4.0),
    warmopt.Measured(**V1),
    warmopt.Measured(**{**V1, "rewarm": True}),
    warmopt.Measured(max_update=None, confidence=True, tol=0.03),
    warmopt.Measured(**V1, measure_every=3, prior_kurtosis=4.0),
    warmopt.Measured(**V1, sample=7, measure_every=2, prior_kurtosis=4.0),
    warmopt.RAdamRectification(),
    warmopt.UntunedLinear(),
    warmopt.UntunedExponential(),
    warmopt.Linear(5),
]
SHAPES = [(6, 5), (9,), (), (3, 2, 2)]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("case,mode", CASE_MODES, ids=str)
def test_fast_step_matches_reference(case: Case, mode: str, policy: warmopt.WarmupPolicy) -> None:
    _run_against_reference(case, mode, policy)


@pytest.mark.parametrize(
    "policy",
    [
        warmopt.Measured(max_update=0.002),
        warmopt.Measured(**V1, sample=7, measure_every=2, prior_kurtosis=4.0),  # windows
        warmopt.RAdamRectification(),
    ],
    ids=repr,
)
@pytest.mark.parametrize("case", [c for c, m in CASE_MODES if m == "foreach"], ids=str)
def test_device_scalar_foreach_step_matches_reference(
    case: Case, policy: warmopt.WarmupPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The paths meant for accelerators (step size as 0-d device divisors, sampled windows
    gathered on the device; nothing read on the host), run on the CPU; RAdam's scale 0 in its
    first steps must step by exactly 0."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, "1")
    _run_against_reference(case, "foreach", policy)


def test_device_scalar_path_steps_by_exactly_zero_at_scale_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sigma = 0 with v = 0 would be 0/0 in the folded denominator: it must give p unchanged."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, "1")
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.0, 3.0]))
    opt = warmopt.Adam([p], lr=1.0, foreach=True, warmup=warmopt.RAdamRectification())
    for _ in range(5):  # RAdam's rectification is 0 for the first 5 steps at beta2 = 0.999
        p.grad = torch.tensor([0.5, 0.0, 0.0, -1.0])  # two coordinates with v = 0 throughout
        opt.step()
        assert float(opt.warmup_scale[0][0]) == 0.0
    assert p.tolist() == [1.0, -2.0, 0.0, 3.0]
    assert torch.isfinite(opt.state[p]["exp_avg"]).all()


def _run_against_reference(case: Case, mode: str, policy: warmopt.WarmupPolicy) -> None:
    fast, slow = twins(SHAPES)
    opt = case.warmopt_class()(fast, **case.kwargs, **MODES[mode], warmup=policy)
    ref = ReferenceOptimizer(slow, case.reference_base(), policy, **case.reference_kwargs())
    for t in range(25):
        # growing gradients exercise the drift term; None grads pause single tensors
        feed([fast, slow], t, none_every=7, scale=1.0 + 0.1 * t)
        opt.step()
        ref.step()
        scales = opt.warmup_scale[0]
        for i in ref.scales:
            assert abs(float(scales[i]) - ref.scales[i]) < 2e-5, (t, i)
    with torch.no_grad():
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_windows_of_non_contiguous_gradients_are_the_same_coordinates() -> None:
    """A window is taken in the tensor's logical (row-major) order, for the fresh ratio and the
    relative step alike: a contiguous gradient (a view into its storage) and a transposed-layout
    one with the same values (reshaped, then sliced) give the same statistics and scales."""
    gen = torch.Generator().manual_seed(0)
    a, b = twins([(12, 10), (40,)])
    policy = warmopt.Measured(sample=16, max_update=0.001, confidence=True, drift=True)
    opt_a = warmopt.Adam(a, lr=1e-3, foreach=True, warmup=policy)
    opt_b = warmopt.Adam(b, lr=1e-3, foreach=True, warmup=policy)
    for t in range(1, 10):
        for pa, pb in zip(a, b):
            g = torch.randn(pa.shape, generator=gen) * (1 + 0.3 * t)
            pa.grad = g.clone()
            pb.grad = g.t().contiguous().t() if g.dim() == 2 else g.clone()
        assert not b[0].grad.is_contiguous()  # type: ignore[union-attr]
        opt_a.step()
        opt_b.step()
        torch.testing.assert_close(opt_a.warmup_scale[0], opt_b.warmup_scale[0], rtol=0, atol=0)
    assert 0 < float(max(opt_a.warmup_scale[0])) < 1


@pytest.mark.parametrize("mode", ["single", "foreach", "fused"])
def test_a_nan_gradient_matches_reference(mode: str) -> None:
    """A NaN gradient coordinate (no GradScaler): the fast step and the oracle agree on every
    scale -- the poisoned matrix keeps its cap, then (its norm NaN) follows the others -- and
    on which coordinates torch poisons."""
    policy = warmopt.Measured(max_update=0.002)
    fast, slow = twins(SHAPES)
    opt = warmopt.Adam(fast, lr=1e-2, **MODES[mode], warmup=policy)
    ref = ReferenceOptimizer(slow, "adam", policy, lr=1e-2)
    for t in range(8):
        feed([fast, slow], t)
        if t == 3:
            for ps in (fast, slow):
                ps[0].grad[1, 2] = float("nan")  # type: ignore[index]
        opt.step()
        ref.step()
        scales = opt.warmup_scale[0]
        for i in ref.scales:
            assert abs(float(scales[i]) - ref.scales[i]) < 2e-5, (t, i)
    assert float(max(opt.warmup_scale[0])) < 1
    for a, b in zip(fast, slow):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
