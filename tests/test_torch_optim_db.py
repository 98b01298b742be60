"""torch's own optimizer tables, run on warmopt's Adam, AdamW and RMSprop.

torch ships with its wheel one ``OptimizerInfo`` per optimizer in
``torch.testing._internal.common_optimizers.optim_db``: the constructor configs its suite runs
(``optim_inputs_func``), the inputs that must fail with a given error
(``optim_error_inputs_func``), the implementations the class supports (foreach, fused,
differentiable) and the flags that were added after its first release. Here the entries of Adam,
AdamW and RMSprop are expanded over warmopt's classes of the same name, with the warm-up off
(``warmup=None``: torch's step bit for bit) and on (the default, on a model with small weights so
that it warms: at unit-sized weights torch's step is already below its cap), and checked for
what torch's suite checks of them:

* every config constructs, steps a small model and round-trips through ``state_dict``; with
  ``warmup=None`` it follows torch's own optimizer exactly, warming its first step is torch's
  step times the scale;
* every error input raises torch's error type with torch's message;
* a state dict without the newer flags, or with a Python-number ``step``, loads as into torch's
  class and steps;
* a fused step with ``found_inf`` set changes nothing, with or without a ``grad_scale`` (0-d or
  one-element 1-D, as GradScaler and torch's tests set it).
"""

from __future__ import annotations

import copy
import io
import math
from typing import Any

import pytest
import torch

import warmopt

common_optimizers = pytest.importorskip(
    "torch.testing._internal.common_optimizers",
    reason="torch's optimizer tables need the expecttest package (pip install -e '.[test]')",
)

NAMES = ("Adam", "AdamW", "RMSprop")
INFOS = {info.name: info for info in common_optimizers.optim_db if info.name in NAMES}
CLASSES: dict[str, type[warmopt.WarmupOptimizer]] = {
    "Adam": warmopt.Adam,
    "AdamW": warmopt.AdamW,
    "RMSprop": warmopt.RMSprop,
}
WARMUPS = [pytest.param(None, id="warmup=None"), pytest.param("measured", id="warming")]
#: the scale of the model's weights in the warming variants: a full step at lr 1e-3 (the lowest
#: of the tables) moves them by ~10 %, far above the default's 2 % cap, so the default warms
WARM_INIT = 0.01
CUDA = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
#: The flags torch's Adam/AdamW/RMSprop.__setstate__ fill in for state dicts saved before them.
NEWER_FLAGS = (
    "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay",
)  # fmt: skip


def _configs(device: str, skip: tuple[str, ...] = (), only: str | None = None) -> list[Any]:
    """Every config of the three tables on ``device``, as torch's suite expands them: each input
    with all implementation flags False, then with each supported one True in turn."""
    marks = CUDA if device == "cuda" else []
    out = []
    for name, info in INFOS.items():
        impls = [
            f
            for f in info.supported_impls
            if f not in skip and (f != "fused" or device in info.supports_fused_on)
        ]
        for inp in info.optim_inputs_func(device=device):
            base = {**inp.kwargs, **dict.fromkeys(impls, False)}
            variants = [("", base)] + [(f, {**base, f: True}) for f in impls]
            for flag, kwargs in variants:
                if only is not None and flag != only:
                    continue
                label = f"{name}-{inp.desc}" + (f"-{flag}" if flag else "")
                out.append(pytest.param(name, kwargs, device, id=label, marks=marks))
    return out


CONFIGS = _configs("cpu") + _configs("cuda")
# torch's own load tests leave differentiable out (its step needs autograd-aware inputs)
LOAD_CONFIGS = _configs("cpu", skip=("differentiable",))
FUSED_CONFIGS = _configs("cpu", only="fused")


def _error_cases() -> list[Any]:
    out = []
    for name, info in INFOS.items():
        for i, err in enumerate(info.optim_error_inputs_func(device="cpu", dtype=torch.float32)):
            out.append(pytest.param(name, i, id=f"{name}-{err.optimizer_error_input.desc}"))
    return out


# ---------------------------------------------------------------- a small model


def _model(
    device: str = "cpu", dtype: torch.dtype = torch.float64, warmup: str | None = None
) -> list[torch.Tensor]:
    """The weights of a 3-5-2 tanh MLP, N(0, 1) entries (``WARM_INIT`` times that with a
    ``warmup``). Plain tensors (no ``requires_grad``), so that ``differentiable=True`` can update
    them in place as torch's step does."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (5,), (2, 5), (2,)]
    init = 1.0 if warmup is None else WARM_INIT
    return [
        (torch.randn(s, generator=gen, dtype=torch.float64) * init).to(device, dtype)
        for s in shapes
    ]


def _backward(params: list[torch.Tensor], t: int) -> None:
    """Set ``.grad`` to the gradient of the MLP's squared error on batch ``t``."""
    w1, b1, w2, b2 = (p.detach().requires_grad_() for p in params)
    gen = torch.Generator().manual_seed(100 + t)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64).to(w1)
    y = torch.randn(8, 2, generator=gen, dtype=torch.float64).to(w1)
    loss = (torch.tanh(x @ w1.T + b1) @ w2.T + b2 - y).square().mean()
    for p, g in zip(params, torch.autograd.grad(loss, [w1, b1, w2, b2])):
        p.grad = g


def _round_trip(state_dict: dict[str, Any]) -> Any:
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _same(a: Any, b: Any) -> bool:
    """Equality of nested hyperparameters that may hold tensors (lr, betas)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _hyper(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def _assert_same_run(
    a: list[torch.Tensor],
    b: list[torch.Tensor],
    opt_a: torch.optim.Optimizer,
    opt_b: torch.optim.Optimizer,
) -> None:
    for p, q in zip(a, b):
        assert torch.equal(p, q), (p - q).abs().max()
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
            assert (sa[key].dtype, sa[key].device) == (sb[key].dtype, sb[key].device), key


def _twins(
    name: str, kwargs: dict[str, Any], warmup: str | None, device: str = "cpu"
) -> tuple[list[torch.Tensor], list[torch.Tensor], warmopt.WarmupOptimizer, torch.optim.Optimizer]:
    ours, theirs = _model(device, warmup=warmup), _model(device, warmup=warmup)
    opt = CLASSES[name](ours, **copy.deepcopy(kwargs), warmup=warmup)
    ref = getattr(torch.optim, name)(theirs, **copy.deepcopy(kwargs))
    return ours, theirs, opt, ref


# ---------------------------------------------------------------- every config


@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("name,kwargs,device", CONFIGS)
def test_every_config_steps_follows_torch_and_round_trips(
    name: str, kwargs: dict[str, Any], device: str, warmup: str | None
) -> None:
    ours, theirs, opt, ref = _twins(name, kwargs, warmup, device)
    assert _same(_hyper(opt), _hyper(ref))
    start = [p.clone() for p in ours]
    for t in range(3):
        _backward(ours, t)
        _backward(theirs, t)
        opt.step()
        ref.step()
        if warmup is None:
            _assert_same_run(ours, theirs, opt, ref)
        elif t == 0:
            # the moments do not depend on lr: the first warming step is torch's times the scale
            # (up to the float32 rounding of the scale, or of 1 - scale on the lerp path)
            scales = torch.cat(opt.warmup_scale).tolist()
            assert all(0 < s < 1 for s in scales), scales
            for p, q, p0, s in zip(ours, theirs, start, scales):
                torch.testing.assert_close(p - p0, s * (q - p0), rtol=1e-4, atol=1e-12)
    assert all(torch.isfinite(p).all() for p in ours)

    # state_dict -> torch.save/load -> a fresh optimizer continues exactly
    resumed = [p.clone() for p in ours]
    fresh = CLASSES[name](resumed, **copy.deepcopy(kwargs), warmup=warmup)
    fresh.load_state_dict(_round_trip(opt.state_dict()))
    assert _same(_hyper(fresh), _hyper(opt))
    for t in range(3, 5):
        _backward(ours, t)
        _backward(resumed, t)
        opt.step()
        fresh.step()
        _assert_same_run(ours, resumed, opt, fresh)


# ---------------------------------------------------------------- every error input


def _raises(err: Any) -> Any:
    if issubclass(err.error_type, Warning):
        return pytest.warns(err.error_type, match=err.error_regex)
    return pytest.raises(err.error_type, match=err.error_regex)


@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("name,index", _error_cases())
def test_every_error_input_raises_torchs_error(name: str, index: int, warmup: str | None) -> None:
    info = INFOS[name]
    err = info.optim_error_inputs_func(device="cpu", dtype=torch.float32)[index]
    _check_error_input(CLASSES[name], err, warmup, "cpu")


def _check_error_input(cls: type, err: Any, warmup: str | None, device: str) -> None:
    inp = err.optimizer_error_input
    params = inp.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(2, 3, device=device))]
    if err.error_on == common_optimizers.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with _raises(err):
            cls(params, **inp.kwargs, warmup=warmup)
        return
    opt = cls(params, **inp.kwargs, warmup=warmup)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.rand_like(p)
    with _raises(err):
        opt.step()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("name", NAMES)
def test_every_cuda_error_input_raises_torchs_error(name: str, warmup: str | None) -> None:
    for err in INFOS[name].optim_error_inputs_func(device="cuda", dtype=torch.float32):
        _check_error_input(CLASSES[name], err, warmup, "cuda")


# ---------------------------------------------------------------- older state dicts


def _train(pairs: list[tuple[list[torch.Tensor], torch.optim.Optimizer]], steps: range) -> None:
    for t in steps:
        for params, opt in pairs:
            _backward(params, t)
            opt.step()


@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("name,kwargs,device", LOAD_CONFIGS)
def test_a_state_dict_without_the_newer_flags_loads_as_into_torch_and_steps(
    name: str, kwargs: dict[str, Any], device: str, warmup: str | None
) -> None:
    ours, theirs, opt, ref = _twins(name, kwargs, warmup, device)
    _train([(ours, opt), (theirs, ref)], range(3))
    dropped = set(INFOS[name].not_og_supported_flags) | set(NEWER_FLAGS)
    old, ref_old = copy.deepcopy(opt.state_dict()), copy.deepcopy(ref.state_dict())
    for sd in (old, ref_old):
        for group in sd["param_groups"]:
            for flag in dropped:
                group.pop(flag, None)
    opt.load_state_dict(old)
    ref.load_state_dict(ref_old)
    # filled in as torch's __setstate__ does (AdamW: decoupled_weight_decay forced back to True)
    assert _same(_hyper(opt), _hyper(ref))
    before = [p.clone() for p in ours]
    _train([(ours, opt), (theirs, ref)], range(3, 5))
    if warmup is None:
        _assert_same_run(ours, theirs, opt, ref)
    else:
        moved = [not torch.equal(p, p0) and bool(torch.isfinite(p).all())
                 for p, p0 in zip(ours, before)]  # fmt: skip
        assert all(moved)
        scales = torch.cat(opt.warmup_scale)
        assert ((scales > 0) & (scales <= 1)).all(), scales


@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("name,kwargs,device", LOAD_CONFIGS)
def test_a_python_number_step_is_converted_as_torch_converts_it(
    name: str, kwargs: dict[str, Any], device: str, warmup: str | None
) -> None:
    ours, theirs, opt, ref = _twins(name, kwargs, warmup, device)
    _train([(ours, opt), (theirs, ref)], range(3))
    # the uninterrupted twin: the same checkpoint with tensor steps
    twin = [p.clone() for p in ours]
    twin_opt = CLASSES[name](twin, **copy.deepcopy(kwargs), warmup=warmup)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    old, ref_old = copy.deepcopy(opt.state_dict()), copy.deepcopy(ref.state_dict())
    for sd in (old, ref_old):
        for st in sd["state"].values():
            st["step"] = st["step"].item()
    opt.load_state_dict(old)
    ref.load_state_dict(ref_old)
    for p, q in zip(ours, theirs):
        mine, torchs = opt.state[p]["step"], ref.state[q]["step"]
        assert isinstance(mine, torch.Tensor)
        assert (mine.dtype, mine.device, mine.shape) == (torchs.dtype, torchs.device, torchs.shape)
        assert float(mine) == float(torchs) == 3
    _train([(ours, opt), (twin, twin_opt), (theirs, ref)], range(3, 5))
    _assert_same_run(ours, twin, opt, twin_opt)
    if warmup is None:
        _assert_same_run(ours, theirs, opt, ref)


@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize(
    "name,kwargs",
    [("Adam", {}), ("Adam", {"fused": True}), ("AdamW", {"fused": True}), ("RMSprop", {})],
    ids=str,
)
def test_a_python_number_step_under_a_float64_default_dtype(
    name: str, kwargs: dict[str, Any], warmup: str | None
) -> None:
    """torch makes the converted step float64 when that is the default dtype, except for fused."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, theirs, opt, ref = _twins(name, kwargs, warmup)
        _train([(ours, opt), (theirs, ref)], range(2))
        old, ref_old = copy.deepcopy(opt.state_dict()), copy.deepcopy(ref.state_dict())
        for sd in (old, ref_old):
            for st in sd["state"].values():
                st["step"] = float(st["step"])
        opt.load_state_dict(old)
        ref.load_state_dict(ref_old)
        expected = torch.float32 if kwargs.get("fused") else torch.float64
        for p, q in zip(ours, theirs):
            assert opt.state[p]["step"].dtype == ref.state[q]["step"].dtype == expected
        _train([(ours, opt), (theirs, ref)], range(2, 4))
        if warmup is None:
            _assert_same_run(ours, theirs, opt, ref)
        assert all(torch.isfinite(p).all() for p in ours)
    finally:
        torch.set_default_dtype(previous)


# ---------------------------------------------------------------- fused steps and found_inf

GRAD_SCALES = {
    "no grad_scale": None,
    "0-d grad_scale": lambda: torch.ones(()),
    "1-d grad_scale": lambda: torch.ones((1,)),
}


@pytest.mark.parametrize("grad_scale", list(GRAD_SCALES))
@pytest.mark.parametrize("first", [True, False], ids=["first step", "later step"])
@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("name,kwargs,device", FUSED_CONFIGS)
def test_a_fused_step_with_found_inf_changes_nothing(
    name: str, kwargs: dict[str, Any], device: str, warmup: str | None, first: bool, grad_scale: str
) -> None:
    params = _model(device, warmup=warmup)
    opt = CLASSES[name](params, **copy.deepcopy(kwargs), warmup=warmup)
    if not first:
        _backward(params, 0)
        opt.step()
    before = [p.clone() for p in params]
    state = copy.deepcopy({i: dict(opt.state[p]) for i, p in enumerate(params)})
    _backward(params, 1)
    make = GRAD_SCALES[grad_scale]
    opt.grad_scale = None if make is None else make()  # type: ignore[attr-defined]
    opt.found_inf = torch.ones(())  # type: ignore[attr-defined]
    opt.step()
    for i, (p, p0) in enumerate(zip(params, before)):
        assert torch.equal(p, p0)
        if first:
            assert float(opt.state[p]["step"]) == 0
            continue
        assert opt.state[p].keys() == state[i].keys()
        for key, value in state[i].items():
            assert torch.equal(opt.state[p][key], value), key


@pytest.mark.parametrize("shape", [(), (1,)], ids=["0-d", "1-d"])
@pytest.mark.parametrize("warmup", WARMUPS)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_a_fused_step_on_scaled_gradients_equals_the_unscaled_step(
    name: str, warmup: str | None, shape: tuple[int, ...]
) -> None:
    """GradScaler's fused path: gradients times the loss scale, ``grad_scale`` and a clear
    ``found_inf`` set; the statistics and the kernel divide the scale out (a power of two, so
    exactly)."""
    plain, scaled = _model(warmup=warmup), _model(warmup=warmup)
    opt = CLASSES[name](plain, fused=True, warmup=warmup)
    opt_scaled = CLASSES[name](scaled, fused=True, warmup=warmup)
    for t in range(4):
        _backward(plain, t)
        _backward(scaled, t)
        for p in scaled:
            p.grad.mul_(1024.0)  # type: ignore[union-attr]
        opt_scaled.grad_scale = torch.full(shape, 1024.0)  # type: ignore[attr-defined]
        opt_scaled.found_inf = torch.zeros(())  # type: ignore[attr-defined]
        opt.step()
        opt_scaled.step()
        del opt_scaled.grad_scale, opt_scaled.found_inf  # type: ignore[attr-defined]
    _assert_same_run(plain, scaled, opt, opt_scaled)
    if warmup is not None:
        assert math.isfinite(float(torch.cat(opt.warmup_scale).min()))
