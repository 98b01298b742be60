"""The warming step's kernels do not depend on the number or the shapes of the tensors.

Checked on the path accelerators take, run on the CPU with ``WARMOPT_DEVICE_PATH_ON_CPU=1`` (step
counts and scales treated as device tensors: nothing read on the host), and on the CPU's own
path. A kernel is an ATen op that touches tensor data (views are not: ``OpCounter.kernels``).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

import warmopt
from warmopt._device import DEVICE_PATH_ON_CPU

from .opcount import OpCounter

#: sample=64: the tensors above 64 coordinates are measured on windows, the others whole. The
#: default policy (the relative step, on each tensor's first coordinates) at a learning rate its
#: cap holds, and the fresh ratio (windows that sweep each tensor) of the earlier default.
POLICIES = {
    "relative step": (warmopt.Measured(sample=64, max_update=1e-3), 1.0),
    "fresh ratio": (
        warmopt.Measured(sample=64, max_update=None, confidence=True, drift=True), 1e-3
    ),
}
POLICY = POLICIES["fresh ratio"][0]
SHAPES = [(8,), (3, 7), (), (300,), (40, 50), (2, 2, 2), (65,), (1, 64)]

LAYOUTS: dict[str, list[tuple[int, ...]]] = {
    "10 tensors, 1 shape": [(2, 4)] * 10,
    "100 tensors, 1 shape": [(2, 4)] * 100,
    "100 tensors, 8 shapes": list(itertools.islice(itertools.cycle(SHAPES), 100)),
    "100 tensors, 100 shapes": [(k + 1,) if k % 2 else (k + 1, 3) for k in range(100)],
}

#: (class, mode): every mode whose update is not a loop over the tensors already (torch's own
#: single-tensor step is), with the accelerator threshold for fused calls of their own (65536
#: elements) above every tensor here
CONFIGS = [
    (warmopt.Adam, {"foreach": True}),
    (warmopt.AdamW, {"foreach": True}),
    (warmopt.RMSprop, {"foreach": True}),
    (warmopt.Adam, {"fused": True}),
    (warmopt.Adam, {"foreach": True, "weight_decay": 0.1}),  # coupled decay reads p too
]


def _warming_step(
    cls: type,
    kwargs: dict[str, Any],
    shapes: list[tuple[int, ...]],
    measured: list[OpCounter],
    policy: str = "fresh ratio",
) -> OpCounter:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    warmup, lr = POLICIES[policy]
    opt = cls(params, lr=lr, warmup=warmup, **kwargs)
    for t in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * (1 + t)
        measured.clear()
        with OpCounter() as counter:
            opt.step()
    assert 0 < float(torch.cat(opt.warmup_scale).max()) < 1  # still warming
    return counter


@pytest.fixture
def measure_counter(monkeypatch: pytest.MonkeyPatch) -> list[OpCounter]:
    """The ops of the measure stage alone, recorded on every step."""
    import warmopt.optimizer

    seen: list[OpCounter] = []
    for name in ("measure", "measure_update"):
        inner = getattr(warmopt.optimizer, name)

        def counted(*args: Any, inner: Any = inner, **kwargs: Any) -> Any:
            counter = OpCounter()
            with counter:
                out = inner(*args, **kwargs)
            seen.append(counter)
            return out

        monkeypatch.setattr(warmopt.optimizer, name, counted)
    return seen


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_accelerator_path_kernels_are_flat_in_tensor_count_and_shapes(
    cls: type,
    kwargs: dict[str, Any],
    policy: str,
    monkeypatch: pytest.MonkeyPatch,
    measure_counter: list[OpCounter],
) -> None:
    """The whole warming step on the accelerator path: the same kernels, op by op, for 10 or 100
    tensors, one shape or a hundred, windows or whole tensors; no host sync; and the statistics
    are one flat pass (one cat per buffer, one segment sum) whatever the layout."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, "1")
    kernels, stats = {}, {}
    for name, shapes in LAYOUTS.items():
        counter = _warming_step(cls, kwargs, shapes, measure_counter, policy)
        assert counter.syncs == 0, (name, counter.ops)
        kernels[name] = counter.kernels
        (measured,) = measure_counter
        stats[name] = measured.kernels
    first = next(iter(kernels.values()))
    for name in kernels:
        assert kernels[name] == first, (name, kernels[name] - first, first - kernels[name])
        assert stats[name] == stats["10 tensors, 1 shape"], name
    assert stats[name]["aten.index_add_"] == 1
    if policy == "fresh ratio":  # g, v (and p with coupled decay)
        assert stats[name]["aten.cat"] == (3 if kwargs.get("weight_decay") else 2)
    else:  # g, p and the algorithm's state: Adam m, v; RMSprop v (its running gradient
        # average is kept laid out as the pass, no copy)
        assert stats[name]["aten.cat"] == (3 if cls is warmopt.RMSprop else 4)
    assert "aten.index_select" not in first  # no gather per window


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("cls,kwargs", CONFIGS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_cpu_path_statistics_are_one_flat_pass_for_any_layout(
    cls: type,
    kwargs: dict[str, Any],
    policy: str,
    monkeypatch: pytest.MonkeyPatch,
    measure_counter: list[OpCounter],
) -> None:
    """On the CPU's own path too the statistics' kernels do not change with the layout (the
    update may: fused mode gives tensors of 4096 elements and more a fused call each there)."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, "0")
    stats = {}
    for name, shapes in LAYOUTS.items():
        _warming_step(cls, kwargs, shapes, measure_counter, policy)
        (measured,) = measure_counter
        assert measured.syncs == 0
        stats[name] = measured.kernels
    assert all(k == stats["10 tensors, 1 shape"] for k in stats.values()), stats


def test_accelerator_path_windows_follow_the_step_counts_through_resets_and_reloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the accelerator path the host counts the steps itself to place the windows: the same
    statistics as the CPU path (which reads the step counts) when tensors pause (no gradient),
    when the state is cleared and made again, and after a state dict is loaded."""
    policy = warmopt.Measured(sample=16, prior_kurtosis=4.0)
    runs = []
    for device_path in ("0", "1"):
        monkeypatch.setenv(DEVICE_PATH_ON_CPU, device_path)
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.zeros(s)) for s in [(40,), (7, 9), (5,)]]
        opt = warmopt.Adam(params, lr=1e-3, fused=True, warmup=policy)
        kurt = []
        for t in range(14):
            for i, p in enumerate(params):
                p.grad = None if (t + i) % 4 == 0 else torch.randn(p.shape, generator=gen) * (1 + t)
            if t == 6:
                opt.state.clear()
            if t == 10:
                saved = opt.state_dict()
                opt = warmopt.Adam(params, lr=1e-3, fused=True, warmup=policy)
                opt.load_state_dict(saved)
            opt.step()
            kurt.append([float(opt.state[p]["warmup_kurtosis"]) for p in params if p in opt.state])
        runs.append(kurt)
    assert runs[0] == runs[1]


def test_accelerator_path_windows_stay_right_after_a_skipped_gradscaler_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GradScaler step with inf gradients (``found_inf``) is skipped on the device, which the
    host cannot see at once: its count of the steps is corrected from a non-blocking copy of the
    device's, so the windows (and statistics) stay those of the CPU path."""
    policy = warmopt.Measured(sample=16, prior_kurtosis=4.0)
    runs = []
    for device_path in ("0", "1"):
        monkeypatch.setenv(DEVICE_PATH_ON_CPU, device_path)
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.zeros(s)) for s in [(40,), (7, 9)]]
        opt = warmopt.Adam(params, lr=1e-3, fused=True, warmup=policy)
        kurt = []
        for t in range(12):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) * (1 + t)
            # what GradScaler sets around step() on the fused path
            opt.grad_scale = torch.ones(())  # type: ignore[attr-defined]
            opt.found_inf = torch.tensor(1.0 if t in (3, 4, 8) else 0.0)  # type: ignore[attr-defined]
            opt.step()
            del opt.grad_scale, opt.found_inf  # type: ignore[attr-defined]
            kurt.append([float(opt.state[p]["warmup_kurtosis"]) for p in params])
        runs.append(kurt)
    assert runs[0] == runs[1]
    assert [float(opt.state[p]["step"]) for p in params] == [9.0, 9.0]


@pytest.mark.parametrize("transposed", [False, True])
def test_kept_buffers_and_cached_windows_measure_what_fresh_ones_do(
    transposed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relative step's pass keeps its work buffers and its windows of the parameters and
    moments from step to step; the scales are those of a twin that makes both afresh on every
    step, through gradients set to None, a parameter whose storage is replaced (``p.data =``)
    and a loaded state dict. With a non-contiguous parameter no window is cached (they are
    copies then)."""
    import warmopt._measure as measure

    def run() -> tuple[list[torch.Tensor], Any]:
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.01)
                  for s in [(40, 50), (30,), (9, 7)]]  # fmt: skip
        if transposed:
            params[2] = torch.nn.Parameter(params[2].detach().t())
        opt = warmopt.Adam(params, lr=1e-2, foreach=True)
        scales = []
        for t in range(12):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) * (1 + t)
            if t == 4:
                params[0].data = params[0].data.clone()  # new storage, same Parameter
            if t == 8:
                saved = opt.state_dict()
                opt = warmopt.Adam(params, lr=1e-2, foreach=True)
                opt.load_state_dict(saved)
            opt.step()
            scales.append(torch.cat(opt.warmup_scale).clone())
            opt.zero_grad()
        return scales, opt

    kept, opt = run()
    (layout,) = opt._layouts._passes.values()
    assert layout.work
    assert set(layout.windows) == (set() if transposed else {"p", "m", "v"})
    monkeypatch.setattr(measure, "KEEP_BYTES", 0)
    monkeypatch.setattr(measure, "KEEP_FRACTION", 0.0)
    monkeypatch.setattr(measure, "_windows", lambda layout, name, ts, ks: [
        measure._first(t, k) for t, k in zip(ts, ks)])  # fmt: skip
    fresh, opt = run()
    (layout,) = opt._layouts._passes.values()
    assert not layout.work and not layout.windows
    assert float(kept[-1].max()) < 1  # still warming
    for a, b in zip(kept, fresh):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
