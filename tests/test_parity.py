"""warmup=None is torch's own optimizer, bit for bit, on the same code path."""

from __future__ import annotations

import pytest
import torch

import warmopt
from warmopt._device import DEVICE_PATH_ON_CPU

from .cases import CASE_MODES, MODES, Case, feed, twins

SHAPES = [(5, 3), (7,), (), (0, 3), (2, 3, 4)]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor], opt_a, opt_b) -> None:  # type: ignore[no-untyped-def]
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()
    for x, y in zip(a, b):
        sa, sb = opt_a.state.get(x, {}), opt_b.state.get(y, {})
        assert set(sb) <= set(sa)
        for k in sb:
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("case,mode", CASE_MODES, ids=str)
@pytest.mark.parametrize("warmup", [None, "constant"])
def test_trajectory_equals_torch_without_warmup(case: Case, mode: str, warmup) -> None:  # type: ignore[no-untyped-def]
    """warmup=None follows torch exactly; 'constant' (scale 1 through the warm-up machinery:
    stats, then snapshot + lerp by 0, or warmopt's own foreach Adam step at scale 1) does too."""
    ours, theirs = twins(SHAPES)
    opt = case.warmopt_class()(ours, **case.kwargs, **MODES[mode], warmup=warmup)
    ref = case.torch_class()(theirs, **case.kwargs, **MODES[mode])
    for t in range(12):
        feed([ours, theirs], t, none_every=4)
        opt.step()
        ref.step()
    _assert_same(ours, theirs, opt, ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", ["single", "foreach", "fused"])
def test_parity_in_other_dtypes(dtype: torch.dtype, mode: str) -> None:
    ours, theirs = twins([(4, 4), (3,)], dtype=dtype)
    opt = warmopt.Adam(ours, lr=1e-2, **MODES[mode], warmup=None)
    ref = torch.optim.Adam(theirs, lr=1e-2, **MODES[mode])
    for t in range(6):
        feed([ours, theirs], t)
        opt.step()
        ref.step()
    _assert_same(ours, theirs, opt, ref)


def test_parity_with_several_groups_and_a_large_tensor() -> None:
    ours, theirs = twins([(512, 1024), (10,), (3, 3)])

    def groups(ps: list[torch.nn.Parameter]) -> list[dict]:
        return [
            {"params": ps[:1], "lr": 1e-3},
            {"params": ps[1:], "lr": 3e-2, "weight_decay": 0.1},
        ]

    opt = warmopt.Adam(groups(ours), foreach=True, warmup=None)
    ref = torch.optim.Adam(groups(theirs), foreach=True)
    for t in range(3):
        feed([ours, theirs], t)
        opt.step()
        ref.step()
    _assert_same(ours, theirs, opt, ref)


def test_parity_of_complex_parameters() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, dtype=torch.complex64, generator=gen)
    a, b = torch.nn.Parameter(base.clone()), torch.nn.Parameter(base.clone())
    opt = warmopt.Adam([a], lr=1e-2, warmup=None)
    ref = torch.optim.Adam([b], lr=1e-2)
    for _ in range(5):
        g = torch.randn(6, dtype=torch.complex64, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    assert torch.equal(a, b)


def test_tensor_lr_matches_torch() -> None:
    ours, theirs = twins([(3, 3)])
    opt = warmopt.Adam(ours, lr=torch.tensor(0.01), warmup=None)
    ref = torch.optim.Adam(theirs, lr=torch.tensor(0.01))
    for t in range(4):
        feed([ours, theirs], t)
        opt.step()
        ref.step()
    _assert_same(ours, theirs, opt, ref)


def test_wrapped_instance_follows_the_same_trajectory() -> None:
    ours, theirs = twins([(4, 2), (2,)])
    opt = warmopt.WarmupOptimizer(torch.optim.AdamW(ours, lr=1e-2), warmup=None)
    ref = torch.optim.AdamW(theirs, lr=1e-2)
    for t in range(5):
        feed([ours, theirs], t)
        opt.step()
        ref.step()
    _assert_same(ours, theirs, opt, ref)


def _same_as_torch_at_scaled_lr(case: Case, **mode: bool) -> None:
    """warmopt with ``Linear(4)`` (scale s = min(1, t/4)) against torch with its lr set to
    lr * s before each step: same parameters and state, bit for bit, after every step."""
    ours, theirs = twins(SHAPES)
    opt = case.warmopt_class()(ours, **case.kwargs, **mode, warmup=warmopt.Linear(4))
    ref = case.torch_class()(theirs, **case.kwargs, **mode)
    lr = ref.param_groups[0]["lr"]
    for t in range(1, 9):
        feed([ours, theirs], t)  # no None grads: every tensor's step count is t
        ref.param_groups[0]["lr"] = lr * min(1.0, t / 4)
        opt.step()
        ref.step()
        _assert_same(ours, theirs, opt, ref)


@pytest.mark.parametrize(
    "case",
    [
        c
        for c, m in CASE_MODES
        if m == "foreach" and not c.kwargs.get("amsgrad") and not c.kwargs.get("momentum")
    ],
    ids=str,
)
def test_warming_foreach_step_is_torch_at_lr_times_scale_bit_for_bit(case: Case) -> None:
    """warmopt's own foreach Adam/AdamW/RMSprop step (no snapshot, no lerp) at scale
    s = min(1, t/4) is torch's foreach step with the group's lr set to lr * s, bit for bit,
    state included."""
    _same_as_torch_at_scaled_lr(case, foreach=True)


@pytest.mark.parametrize("case", [c for c, m in CASE_MODES if m == "single"], ids=str)
def test_warming_single_tensor_step_is_torch_at_lr_times_scale_bit_for_bit(case: Case) -> None:
    """Single-tensor mode on the CPU runs torch's own single-tensor update per tensor with the
    group's lr set to lr * s (no copy, no lerp): torch's step at that lr, bit for bit, for every
    case (amsgrad, momentum, centered, weight decay, maximize included), state included."""
    _same_as_torch_at_scaled_lr(case, foreach=False)


@pytest.mark.parametrize(
    "case", [c for c, m in CASE_MODES if m == "fused" and c.base != "rmsprop"], ids=str
)
def test_warming_fused_adam_per_tensor_is_torch_at_lr_times_scale_bit_for_bit(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fused mode steps each large tensor by its own fused call at lr * s (no copy, no lerp), and
    on the CPU a group's few small tensors too (every tensor here): torch's fused step at that lr,
    bit for bit."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, "0")
    _same_as_torch_at_scaled_lr(case, fused=True)


@pytest.mark.parametrize("host", [True, False], ids=["host-scalars", "device-divisors"])
def test_bfloat16_warming_foreach_step_against_torch(
    host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bfloat16: the CPU path is torch's step at lr * s bit for bit; the accelerator path
    (forced here on the CPU) rounds its folded denominator once more, so a few elements differ
    from torch by about one bfloat16 rounding, no more."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, "0" if host else "1")
    ours, theirs = twins([(64, 64)] * 3, dtype=torch.bfloat16)
    opt = warmopt.Adam(ours, lr=1e-2, foreach=True, warmup=warmopt.Linear(4))
    ref = torch.optim.Adam(theirs, lr=1e-2, foreach=True)
    for t in range(1, 9):
        feed([ours, theirs], t)
        ref.param_groups[0]["lr"] = 1e-2 * min(1.0, t / 4)
        opt.step()
        ref.step()
    differ = sum(int((a != b).sum()) for a, b in zip(ours, theirs))
    worst = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs))
    if host:
        assert differ == 0
    else:
        assert 0 < differ < 0.05 * 3 * 64 * 64, differ
        assert worst <= 2 * 2.0**-8 * max(float(b.float().abs().max()) for b in theirs), worst


def _to_cuda_grads(params: list[torch.Tensor]) -> None:
    for p in params:
        if p.grad is not None:
            p.grad = p.grad.cuda()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["foreach", "fused"])
def test_cuda_warming_step_is_torch_at_lr_times_scale_without_a_sync(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accelerator paths for real: foreach with 0-d device divisors, fused with one call per
    tensor at a 0-d device lr. Equal to torch at lr * s up to rounding, and no host-device sync
    while warming."""
    from .opcount import OpCounter

    # a (256, 256) tensor takes its own fused call at a 0-d device lr, the small ones the lerp
    shapes = [*SHAPES, (256, 256)]
    ours, theirs = ([torch.nn.Parameter(p.detach().cuda()) for p in ps] for ps in twins(shapes))
    opt = warmopt.Adam(ours, lr=1e-2, warmup=warmopt.Linear(4), **MODES[mode])
    ref = torch.optim.Adam(theirs, lr=1e-2, **MODES[mode])
    for t in range(1, 9):
        feed([ours, theirs], t)
        _to_cuda_grads(ours + theirs)
        ref.param_groups[0]["lr"] = 1e-2 * min(1.0, t / 4)
        with OpCounter() as counter:
            opt.step()
        if t < 4:
            assert counter.syncs == 0, t
        ref.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["foreach", "fused"])
def test_cuda_measured_warmup_matches_the_cpu_run(mode: str) -> None:
    """Measured with sampled windows (gathered on the device) on CUDA against the same run on
    the CPU (host scalars, window views): the same scales and parameters up to rounding."""
    cpu, gpu = twins(SHAPES)
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in gpu]
    policy = warmopt.Measured(sample=5)
    opts = [warmopt.Adam(ps, lr=1e-2, warmup=policy, **MODES[mode]) for ps in (cpu, gpu)]
    for t in range(10):
        feed([cpu, gpu], t, none_every=4)
        _to_cuda_grads(gpu)
        for opt in opts:
            opt.step()
        torch.testing.assert_close(
            opts[1].warmup_scale[0].cpu(), opts[0].warmup_scale[0], rtol=1e-5, atol=1e-6
        )
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-5, atol=1e-6)
