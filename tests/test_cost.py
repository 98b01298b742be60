"""Step cost by counts, not times: ops per step must not grow with the tensor count, the step
must not add a host-device sync, and after warm-up the step is torch's own."""

from __future__ import annotations

import pytest
import torch

import warmopt
from warmopt._device import DEVICE_PATH_ON_CPU

from .opcount import OpCounter, make, step_ops

MODES = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single": {"foreach": False}}
POLICIES = ["measured", "radam", "untuned_linear"]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("policy", POLICIES)
def test_added_ops_do_not_grow_with_the_number_of_tensors(mode: str, policy: str) -> None:
    extra = []
    for n in (10, 100):
        ours = step_ops(*make(n, warmopt.Adam, lr=1e-3, warmup=policy, **MODES[mode]))
        theirs = step_ops(*make(n, torch.optim.Adam, lr=1e-3, **MODES[mode]))
        extra.append(ours.total - theirs.total)
    # Equal, or smaller for more tensors: warmopt's own foreach Adam step (warming Adam/AdamW in
    # foreach mode) skips torch's two host reads of each CPU ``step`` (2 ops per tensor).
    own_step = mode == "foreach"
    assert extra[1] == extra[0] - (2 * 90 if own_step else 0), extra
    assert extra[0] + (2 * 10 if own_step else 0) > 0  # the warm-up work is really counted


def test_warming_foreach_adam_step_is_constant_in_the_tensor_count() -> None:
    """Not only the additions: the whole warming step dispatches the same ops for 10 and 100
    tensors (warmopt's own foreach Adam reads no per-tensor step on the host)."""
    totals = [step_ops(*make(n, warmopt.Adam, lr=1e-3, foreach=True)).total for n in (10, 100)]
    assert totals[0] == totals[1], totals


@pytest.mark.parametrize("cls", [warmopt.RMSprop, warmopt.AdamW])
def test_rmsprop_and_adamw_ops_do_not_grow_either(cls: type) -> None:
    base = {warmopt.RMSprop: torch.optim.RMSprop, warmopt.AdamW: torch.optim.AdamW}[cls]
    extra = []
    for n in (10, 100):
        extra.append(
            step_ops(*make(n, cls, foreach=True)).total
            - step_ops(*make(n, base, foreach=True)).total
        )
    # AdamW: as Adam above (its own foreach step skips torch's 2 host reads per tensor).
    assert extra[1] == extra[0] - (2 * 90 if cls is warmopt.AdamW else 0), extra


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_host_sync_beyond_torchs_own(mode: str) -> None:
    """torch's foreach Adam reads each CPU ``step`` on the host twice, its single-tensor Adam
    once (by design: no device involved); its fused path reads nothing. warmopt adds no read of
    its own: its warming foreach step (its own Adam update) reads none at all, its single-tensor
    step is torch's own (the same reads)."""
    ours_opt, params = make(50, warmopt.Adam, lr=1e-3, **MODES[mode])
    ours = step_ops(ours_opt, params)
    theirs = step_ops(*make(50, torch.optim.Adam, lr=1e-3, **MODES[mode]))
    n = len(params)
    assert ours.syncs == (n if mode == "single" else 0)
    assert theirs.syncs == {"foreach": 2 * n, "single": n, "fused": 0}[mode]


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
        p.grad = torch.ones_like(p)
    opt.step()
    assert float(opt.warmup_scale[1][0]) == 0.5
    assert float(opt.warmup_scale[0][0]) == 1.0


def test_fused_large_tensors_take_one_fused_call_each() -> None:
    """Fused mode while warming: each tensor of at least FUSED_EACH_MIN elements costs
    exactly one dispatched op of its own (its fused kernel; the step increments are one foreach
    op for all of them) instead of a share of the copy + lerp; small tensors keep a constant op
    count (tests above)."""
    size = warmopt._apply.FUSED_EACH_MIN

    def ops(n_large: int) -> int:
        params = [torch.nn.Parameter(torch.full((2, 4), 1e-3)) for _ in range(5)]
        params += [torch.nn.Parameter(torch.full((size,), 1e-3)) for _ in range(n_large)]
        # sample=None: measured whole, so the count is not mixed with the window views
        opt = warmopt.Adam(params, lr=1e-3, fused=True, warmup=warmopt.Measured(sample=None))
        return step_ops(opt, params).total

    counts = [ops(k) for k in (1, 2, 4)]
    assert counts[1] - counts[0] == 1 and counts[2] - counts[1] == 2, counts


@pytest.mark.parametrize("host", [True, False], ids=["cpu-views", "device-views"])
def test_sampling_windows_are_views_or_gathers_not_passes(
    host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tensor above ``sample`` is measured on its window: a view at a start the host knows
    (from the CPU step count, or on an accelerator from its own count of the steps), gathered
    with every other tensor's coordinates by one cat. No op over the whole tensor, no kernel of
    its own (the accelerator path used to gather each window with an index_select), and the
    same view per tensor on both paths: 2 and 4 windowed tensors differ by 4 views (g and v)."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, "0" if host else "1")

    fresh = warmopt.Measured(sample=16, max_update=None, confidence=True, drift=True)

    def ops(n_large: int) -> OpCounter:
        params = [torch.nn.Parameter(torch.zeros(8)) for _ in range(5)]
        params += [torch.nn.Parameter(torch.zeros(64)) for _ in range(n_large)]
        opt = warmopt.Adam(params, lr=1e-3, foreach=True, warmup=fresh)
        return step_ops(opt, params)

    one, three = ops(2), ops(4)
    added = {k: three.ops.get(k, 0) - one.ops.get(k, 0) for k in three.ops}
    added = {k: v for k, v in added.items() if v}
    assert added == {"aten.as_strided": 4}, added


@pytest.mark.parametrize("host", [True, False], ids=["cpu-views", "device-views"])
@pytest.mark.parametrize("cls", [warmopt.Adam, warmopt.RMSprop])
def test_relative_step_reads_each_tensors_first_coordinates_as_views(
    cls: type, host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default policy measures a tensor above ``sample`` on its first ``sample``
    coordinates: views of the gradient, the parameter and the state the update is computed
    from, gathered with every other tensor's by one cat each. Two more such tensors add views
    only (Adam: g, p, m, v; RMSprop: g, p, v and the running gradient average), no kernel."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, "0" if host else "1")

    def ops(n_large: int) -> OpCounter:
        params = [torch.nn.Parameter(torch.full((2, 4), 1e-3)) for _ in range(5)]
        params += [torch.nn.Parameter(torch.full((8, 8), 1e-3)) for _ in range(n_large)]
        opt = cls(params, lr=1e-3, foreach=True, warmup=warmopt.Measured(sample=16))
        return step_ops(opt, params)

    one, three = ops(2), ops(4)
    added = {k: three.ops.get(k, 0) - one.ops.get(k, 0) for k in three.ops}
    added = {k: v for k, v in added.items() if v}
    assert set(added) <= {"aten.view", "aten.slice", "aten.as_strided", "aten.reshape"}, added
    assert sum(added.values()) <= 2 * 4 * 2, added
