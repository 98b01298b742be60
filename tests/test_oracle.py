"""The fast step (foreach / fused / single) agrees with the slow reference oracle."""

from __future__ import annotations

import pytest
import torch

import warmopt
from warmopt._reference import ReferenceOptimizer

from .cases import CASE_MODES, MODES, Case, feed, twins

POLICIES = [
    warmopt.Measured(),
    warmopt.Measured(rewarm=True),
    warmopt.Measured(tol=0.03, drift=False),
    warmopt.Measured(measure_every=3, prior_kurtosis=4.0),
    warmopt.Measured(sample=7, measure_every=2, prior_kurtosis=4.0),
    warmopt.RAdamRectification(),
    warmopt.UntunedLinear(),
    warmopt.UntunedExponential(),
    warmopt.Linear(5),
]
SHAPES = [(6, 5), (9,), (), (3, 2, 2)]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("case,mode", CASE_MODES, ids=str)
def test_fast_step_matches_reference(case: Case, mode: str, policy: warmopt.WarmupPolicy) -> None:
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
