"""Step cost by counts, not times: ops per step must not grow with the tensor count, the step
must not add a host-device sync, and after warm-up the step is torch's own."""

from __future__ import annotations

import pytest
import torch

import warmopt

from .opcount import make, step_ops

MODES = {"fused": {"fused": True}, "foreach": {"foreach": True}}
POLICIES = ["measured", "radam", "untuned_linear"]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("policy", POLICIES)
def test_added_ops_do_not_grow_with_the_number_of_tensors(mode: str, policy: str) -> None:
    extra = []
    for n in (10, 100):
        ours = step_ops(*make(n, warmopt.Adam, lr=1e-3, warmup=policy, **MODES[mode]))
        theirs = step_ops(*make(n, torch.optim.Adam, lr=1e-3, **MODES[mode]))
        extra.append(ours.total - theirs.total)
    assert extra[0] == extra[1], extra
    assert extra[0] > 0  # the warm-up work is really being counted


@pytest.mark.parametrize("cls", [warmopt.RMSprop, warmopt.AdamW])
def test_rmsprop_and_adamw_ops_do_not_grow_either(cls: type) -> None:
    base = {warmopt.RMSprop: torch.optim.RMSprop, warmopt.AdamW: torch.optim.AdamW}[cls]
    extra = []
    for n in (10, 100):
        extra.append(
            step_ops(*make(n, cls, foreach=True)).total
            - step_ops(*make(n, base, foreach=True)).total
        )
    assert extra[0] == extra[1], extra


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_host_sync_beyond_torchs_own(mode: str) -> None:
    """torch's foreach Adam reads each CPU ``step`` on the host (by design: no device involved);
    its fused path reads nothing. warmopt must add no read of its own in either."""
    ours = step_ops(*make(50, warmopt.Adam, lr=1e-3, **MODES[mode]))
    theirs = step_ops(*make(50, torch.optim.Adam, lr=1e-3, **MODES[mode]))
    assert ours.syncs == theirs.syncs
    if mode == "fused":
        assert ours.syncs == 0


@pytest.mark.parametrize("mode", sorted(MODES))
def test_after_warmup_the_step_is_torchs_step(mode: str) -> None:
    ours_opt, ours_p = make(20, warmopt.Adam, lr=1e-3, warmup=warmopt.Linear(2), **MODES[mode])
    theirs = step_ops(*make(20, torch.optim.Adam, lr=1e-3, **MODES[mode]))
    ours = step_ops(ours_opt, ours_p, warm=4)  # scale 1 at step 2, known on the host at step 3
    assert ours.ops == theirs.ops


def test_warmup_machinery_restarts_for_a_new_group() -> None:
    opt, params = make(5, warmopt.Adam, lr=1e-3, warmup=warmopt.Linear(2), foreach=True)
    step_ops(opt, params, warm=4)
    new = torch.nn.Parameter(torch.zeros(8))
    opt.add_param_group({"params": [new]})
    new.grad = torch.ones(8)
    for p in params:
        p.grad = torch.ones(8)
    opt.step()
    assert float(opt.warmup_scale[1][0]) == 0.5
    assert float(opt.warmup_scale[0][0]) == 1.0
