"""warmopt under torch's LR schedulers, GradScaler (both paths), NaN gradients and torch.compile."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as lrs

import warmopt
from warmopt._device import DEVICE_PATH_ON_CPU

from .cases import feed, twins, v1

SHAPES = [(6, 4), (4,), (3, 3)]
#: RMS of the parameters' entries: small enough that the default policy's cap binds at these
#: learning rates (Adam's first relative step at lr 1e-2 is 0.2, ten times max_update), so the
#: steps these tests look at are warming ones
SMALL = 0.05


def _groups(ps: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-3}]


# ---------------------------------------------------------------- LR schedulers

SCHEDULERS: list[Any] = [
    pytest.param(lambda o: lrs.StepLR(o, step_size=3, gamma=0.5), id="StepLR"),
    pytest.param(lambda o: lrs.CosineAnnealingLR(o, T_max=8, eta_min=1e-4), id="CosineAnnealingLR"),
    pytest.param(lambda o: lrs.LambdaLR(o, lambda t: 1.0 / (1 + t)), id="LambdaLR"),
    pytest.param(lambda o: lrs.OneCycleLR(o, max_lr=[0.1, 0.03], total_steps=12), id="OneCycleLR"),
    pytest.param(
        lambda o: lrs.ReduceLROnPlateau(o, factor=0.5, patience=1), id="ReduceLROnPlateau"
    ),
    pytest.param(
        lambda o: lrs.SequentialLR(
            o,
            [lrs.LinearLR(o, start_factor=0.1, total_iters=4), lrs.CosineAnnealingLR(o, T_max=8)],
            milestones=[4],
        ),
        id="SequentialLR",
    ),
]


def _sched_step(sched: Any, t: int) -> None:
    if isinstance(sched, lrs.ReduceLROnPlateau):
        sched.step(1.0)  # a flat metric: the LR is halved every other step
    else:
        sched.step()


def _hyper(opt: torch.optim.Optimizer) -> list[tuple[Any, Any]]:
    return [(g["lr"], g["betas"]) for g in opt.param_groups]


#: entries of RMS 0.005: the default's cap binds for most of the 12 steps at these schedules
#: (the scale rises as the scheduler lowers lr; a decay to ~0 ends the warm-up before the end)
TINY = 0.005


@pytest.mark.parametrize("make_sched", SCHEDULERS)
@pytest.mark.parametrize("warmup", ["measured", v1(), None], ids=["measured", "v1", "none"])
def test_schedulers_drive_lr_exactly_as_on_torch_adam(
    make_sched: Callable[[torch.optim.Optimizer], Any], warmup: Any
) -> None:
    """The warm-up never writes lr (or betas): every step the scheduler leaves the same values
    in param_groups as on a torch.optim.Adam twin; with warmup=None the trajectory is torch's.
    The warm-up runs under the scheduler: steps at several of the lrs it sets are warming ones
    (the default's scale follows lr, so it may end before the schedule does; the previous
    default's does not depend on lr and is still below 1 after the 12 steps)."""
    ours, theirs = twins(SHAPES, init=TINY)
    opt = warmopt.Adam(_groups(ours), lr=1e-2, warmup=warmup)
    ref = torch.optim.Adam(_groups(theirs), lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched, ref_sched = make_sched(opt), make_sched(ref)
        assert _hyper(opt) == _hyper(ref)
        seen, warming = set(), set()
        for t in range(12):
            feed([ours, theirs], t)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            ref.step()
            if float(torch.cat(opt.warmup_scale).min()) < 1:
                warming.add(lr)  # a warming step at the lr the scheduler set
            _sched_step(sched, t)
            _sched_step(ref_sched, t)
            assert _hyper(opt) == _hyper(ref), t
            seen.add(opt.param_groups[0]["lr"])
    assert len(seen) > 2  # the scheduler really moved lr
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    if warmup is None:
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q)
    else:
        assert len(warming) > 2, warming  # warm-up ran under the scheduler
        if warmup != "measured":
            assert float(torch.cat(opt.warmup_scale).min()) < 1
        assert sched.state_dict().keys() == ref_sched.state_dict().keys()


@pytest.mark.parametrize(
    "cls,ref_cls",
    [(warmopt.AdamW, torch.optim.AdamW), (warmopt.RMSprop, torch.optim.RMSprop)],
    ids=["AdamW", "RMSprop"],
)
def test_scheduler_on_adamw_and_rmsprop_with_warmup_none_is_torchs(
    cls: type, ref_cls: type
) -> None:
    ours, theirs = twins(SHAPES)
    opt, ref = cls(ours, lr=1e-2, warmup=None), ref_cls(theirs, lr=1e-2)
    sched, ref_sched = lrs.CosineAnnealingLR(opt, T_max=6), lrs.CosineAnnealingLR(ref, T_max=6)
    for t in range(8):
        feed([ours, theirs], t)
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)


def test_scheduler_fills_a_tensor_lr_in_place() -> None:
    """With a tensor lr (the torch.compile recipe) schedulers fill_ it; the warm-up still only
    reads it."""
    ours, theirs = twins(SHAPES)
    opt = warmopt.Adam(ours, lr=torch.tensor(1e-2))
    ref = torch.optim.Adam(theirs, lr=torch.tensor(1e-2))
    lr_obj = opt.param_groups[0]["lr"]
    sched, ref_sched = lrs.LambdaLR(opt, lambda t: 0.9**t), lrs.LambdaLR(ref, lambda t: 0.9**t)
    for t in range(5):
        feed([ours, theirs], t)
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
        assert opt.param_groups[0]["lr"] is lr_obj
        assert torch.equal(opt.param_groups[0]["lr"], ref.param_groups[0]["lr"])


# ---------------------------------------------------------------- a scheduler's own warm-up

#: (scheduler, whether its lr rises over the first 12 steps)
LR_SHAPES: list[Any] = [
    pytest.param(None, False, id="constant"),
    pytest.param(lambda o: lrs.StepLR(o, step_size=3, gamma=0.5), False, id="StepLR"),
    pytest.param(lambda o: lrs.CosineAnnealingLR(o, T_max=12), False, id="CosineAnnealingLR"),
    pytest.param(lambda o: lrs.LambdaLR(o, lambda t: 1.0 / (1 + t)), False, id="LambdaLR-decay"),
    pytest.param(lambda o: lrs.ReduceLROnPlateau(o, factor=0.5, patience=1), False, id="Plateau"),
    pytest.param(lambda o: lrs.LinearLR(o, start_factor=0.1, total_iters=5), True, id="LinearLR"),
    pytest.param(lambda o: lrs.OneCycleLR(o, max_lr=0.1, total_steps=12), True, id="OneCycleLR"),
    pytest.param(
        lambda o: lrs.SequentialLR(
            o,
            [lrs.LinearLR(o, start_factor=0.1, total_iters=4), lrs.CosineAnnealingLR(o, T_max=8)],
            milestones=[4],
        ),
        True,
        id="SequentialLR-warmup-cosine",
    ),
    # what transformers' get_linear_schedule_with_warmup builds: a LambdaLR from 0
    pytest.param(
        lambda o: lrs.LambdaLR(o, lambda t: min(1.0, t / 4) * (1 - t / 24)),
        True,
        id="LambdaLR-warmup-from-0",
    ),
]


def _rise_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if "while warmopt is still warming up" in str(w.message)]


def _run_schedule(opt: torch.optim.Optimizer, ps: list[Any], make: Any, steps: int = 12) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched = None if make is None else make(opt)
        for t in range(steps):
            feed([ps], t)
            opt.step()
            if sched is not None:
                _sched_step(sched, t)
    return _rise_warnings(caught)


@pytest.mark.parametrize("make_sched,rises", LR_SHAPES)
@pytest.mark.parametrize(
    "warmup",
    ["measured", warmopt.Measured(rewarm=False), v1(), None],
    ids=["measured", "ramp", "v1", "none"],
)
def test_a_scheduler_warmup_during_warmopts_warns_once_naming_both_ways_out(
    make_sched: Any, rises: bool, warmup: Any, request: pytest.FixtureRequest
) -> None:
    """The two ramps multiply: a rising lr while warming warns once; decaying or constant
    schedules, and warmup=None, never warn. A schedule from lr 0 (transformers' warm-up) under
    the ramp: the first step, at lr 0, has no size to cap, so its scale is 1 and, being a
    running maximum, stays 1 -- the warm-up is over before the lr rises, nothing multiplies, no
    warning. The default watches instead, and caps the rising lr where its step grows too
    large: the two do multiply, and it warns."""
    (ps,) = twins(SHAPES, n=1, init=TINY)
    opt = warmopt.Adam(_groups(ps), lr=1e-2, warmup=warmup)
    caught = _run_schedule(opt, ps, make_sched)
    from_zero = "LambdaLR-warmup-from-0" in request.node.name
    if "ramp" in request.node.name and from_zero:
        assert opt._warmup_done and caught == []
        return
    if warmup is not None:
        assert not opt._warmup_done  # warming all along: each rise counts
    assert len(caught) == (1 if rises and warmup is not None else 0), caught
    if caught:
        (w,) = caught
        assert w.category is UserWarning
        text = str(w.message)
        assert "Drop the warm-up phase" in text and "warmup=None" in text


def test_a_rise_after_warmopts_warmup_ended_does_not_warn() -> None:
    """E.g. a warm restart: warmopt is not warming any more, so nothing multiplies."""
    (ps,) = twins(SHAPES, n=1)
    opt = warmopt.Adam(ps, lr=1e-2, warmup=warmopt.Linear(2))
    caught = _run_schedule(opt, ps, lambda o: lrs.LambdaLR(o, lambda t: 1.0 if t < 6 else 2.0))
    assert opt._warmup_done and caught == []


def test_a_tensor_lr_is_not_read_for_the_rise_check() -> None:
    """A tensor lr (the torch.compile recipe) is skipped: reading it could sync."""
    (ps,) = twins(SHAPES, n=1, init=SMALL)
    opt = warmopt.Adam(ps, lr=torch.tensor(1e-2))
    caught = _run_schedule(opt, ps, lambda o: lrs.LinearLR(o, start_factor=0.1, total_iters=5))
    assert caught == [] and float(opt.param_groups[0]["lr"]) == pytest.approx(1e-2)
    assert not opt._warmup_done  # the lr rose while warming


def test_loading_a_checkpoint_with_a_higher_lr_is_not_a_rise() -> None:
    (ps,) = twins(SHAPES, n=1, init=0.01)  # the cap binds at lr 1e-3 (first relative step 0.1)
    opt = warmopt.Adam(ps, lr=1e-3)
    feed([ps], 0)
    opt.step()
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 1e-2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.load_state_dict(sd)
        feed([ps], 1)
        opt.step()
    assert _rise_warnings(caught) == []
    assert float(torch.cat(opt.warmup_scale).max()) < 1.0  # still warming


# ---------------------------------------------------------------- GradScaler

BAD = float("inf")


def _model(seed: int = 0) -> torch.nn.Module:
    """A small MLP whose weights are a tenth of torch's initial ones (entries of RMS ~0.025): the
    default policy's cap binds at lr 1e-2 for the steps the tests look at."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.1)
    return model


def _batch(t: int) -> torch.Tensor:
    return torch.randn(8, 5, generator=torch.Generator().manual_seed(50 + t))


def _snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "state": {
            i: {k: v.clone() for k, v in opt.state[p].items()}
            for i, p in enumerate(model.parameters())
            if p in opt.state
        },
    }


def _assert_snapshots_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    for x, y in zip(a["params"], b["params"]):
        assert torch.equal(x, y)
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k]), (i, k)


def _scaled_run(
    make_opt: Callable[[Any], torch.optim.Optimizer],
    steps: list[int],
    bad: set[int],
    scaler: bool = True,
    clip: bool = False,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[dict[str, Any]]]:
    """Train on the batches ``steps``; on steps in ``bad`` the loss is inf. Returns the model, the
    optimizer and a (before, after) snapshot pair for every bad step."""
    model = _model()
    opt = make_opt(model.parameters())
    sc = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000) if scaler else None
    pairs = []
    for t in steps:
        opt.zero_grad()
        loss = model(_batch(t)).square().mean()
        if t in bad:
            loss = loss * BAD
        if sc is None:
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
            continue
        sc.scale(loss).backward()
        if clip:
            sc.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        before = _snapshot(model, opt)
        old_scale = sc.get_scale()
        sc.step(opt)
        sc.update()
        if t in bad:
            pairs.append({"before": before, "after": _snapshot(model, opt)})
            assert sc.get_scale() == old_scale / 2  # the scaler saw the inf
    return model, opt, pairs


NON_FUSED = [
    pytest.param(lambda ps: warmopt.Adam(ps, lr=1e-2, foreach=False), id="adam-single"),
    pytest.param(lambda ps: warmopt.Adam(ps, lr=1e-2, foreach=True), id="adam-foreach"),
    pytest.param(lambda ps: warmopt.AdamW(ps, lr=1e-2), id="adamw"),
    pytest.param(lambda ps: warmopt.RMSprop(ps, lr=1e-2, momentum=0.5), id="rmsprop"),
    # without momentum: the running gradient average warmup_grad_avg
    pytest.param(lambda ps: warmopt.RMSprop(ps, lr=1e-2), id="rmsprop-grad-avg"),
    pytest.param(lambda ps: warmopt.Adam(ps, lr=1e-2, warmup=v1()), id="adam-v1"),
]
FUSED = [
    pytest.param(lambda ps: warmopt.Adam(ps, lr=1e-2, fused=True), id="adam-fused"),
    pytest.param(
        lambda ps: warmopt.Adam(ps, lr=1e-2, fused=True, weight_decay=0.1), id="adam-l2-fused"
    ),
    pytest.param(
        lambda ps: warmopt.AdamW(ps, lr=1e-2, fused=True, amsgrad=True), id="adamw-amsgrad-fused"
    ),
    pytest.param(
        lambda ps: warmopt.WarmupOptimizer(torch.optim.Adam(ps, lr=1e-2, fused=True)),
        id="wrapped-fused",
    ),
    pytest.param(lambda ps: warmopt.Adam(ps, lr=1e-2, fused=True, warmup=v1()), id="adam-v1-fused"),
]


def _warming_before(pair: dict[str, Any]) -> bool:
    """Whether some tensor was still warming before the bad step (then a step that went through
    would have changed its warm-up numbers)."""
    return any(float(st["warmup_scale"]) < 1 for st in pair["before"]["state"].values())


def test_grad_scaler_works_on_cpu() -> None:
    sc = torch.amp.GradScaler("cpu")
    assert sc.is_enabled()
    assert not warmopt.Adam(_model().parameters())._step_supports_amp_scaling
    assert warmopt.Adam(_model().parameters(), fused=True)._step_supports_amp_scaling


@pytest.mark.parametrize("make_opt", NON_FUSED)
@pytest.mark.parametrize("bad_step", [0, 2])
def test_grad_scaler_skips_the_step_on_inf_non_fused_path(
    make_opt: Callable[[Any], torch.optim.Optimizer], bad_step: int
) -> None:
    """GradScaler does not call step() at all: nothing changes, the next steps are those of a run
    that never saw the bad batch."""
    steps = list(range(6))
    model, opt, pairs = _scaled_run(make_opt, steps, {bad_step})
    (pair,) = pairs
    _assert_snapshots_equal(pair["before"], pair["after"])
    if bad_step:
        assert _warming_before(pair)
        if "warmup_grad_avg" in pair["before"]["state"][0]:  # RMSprop's average kept too
            for st in pair["after"]["state"].values():
                assert st["warmup_grad_avg"].abs().sum() > 0
    clean_model, clean_opt, _ = _scaled_run(make_opt, [t for t in steps if t != bad_step], set())
    _assert_snapshots_equal(_snapshot(model, opt), _snapshot(clean_model, clean_opt))


#: warmopt's fused warming step: every tensor through the shared call + lerp (the accelerator
#: path, WARMOPT_DEVICE_PATH_ON_CPU=1: these tensors are small), or every tensor by its own fused
#: call at lr * s (the CPU path: a group with a few tensors gives each its own call).
FUSED_PATHS = pytest.mark.parametrize("fused_min", ["1", "0"], ids=["lerp", "per-tensor"])


@FUSED_PATHS
@pytest.mark.parametrize("make_opt", FUSED)
@pytest.mark.parametrize("bad_step", [0, 2])
def test_grad_scaler_fused_path_inf_step_changes_nothing(
    make_opt: Callable[[Any], torch.optim.Optimizer],
    bad_step: int,
    fused_min: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fused path: the scaler sets grad_scale/found_inf and always calls step(). The inf step
    leaves params, moments, step and every warmup_* entry as they were (on step 0 the state is
    created at its initial values), and the run then equals one that never saw the bad batch."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, fused_min)
    steps = list(range(6))
    model, opt, pairs = _scaled_run(make_opt, steps, {bad_step})
    (pair,) = pairs
    after = pair["after"]
    if bad_step == 0:
        assert pair["before"]["state"] == {}
        for st in after["state"].values():
            assert float(st["step"]) == 0
            assert float(st["warmup_scale"]) == 0 and float(st["warmup_evidence"]) == 1
            assert float(st["warmup_kurtosis"]) == warmopt.Measured().prior_kurtosis
            assert float(st["warmup_confidence"]) == 0
            assert float(st["warmup_cap"]) == 0 and float(st["warmup_update_ratio"]) == 0
            assert not st["exp_avg"].any() and not st["exp_avg_sq"].any()
        for x, y in zip(pair["before"]["params"], after["params"]):
            assert torch.equal(x, y)
    else:
        _assert_snapshots_equal(pair["before"], after)
        assert _warming_before(pair)
        for st_before, st_after in zip(pair["before"]["state"].values(), after["state"].values()):
            for key in ("warmup_cap", "warmup_update_ratio", "warmup_drift"):
                assert torch.equal(st_before[key], st_after[key]), key
        if opt.warmup == warmopt.Measured():  # the cap was measured before the bad step
            assert any(float(st["warmup_update_ratio"]) > 0 for st in after["state"].values())
    clean_model, clean_opt, _ = _scaled_run(make_opt, [t for t in steps if t != bad_step], set())
    _assert_snapshots_equal(_snapshot(model, opt), _snapshot(clean_model, clean_opt))


@FUSED_PATHS
@pytest.mark.parametrize("make_opt", FUSED + NON_FUSED[1:2])
@pytest.mark.parametrize("clip", [False, True], ids=["scaled-grads", "unscale_-and-clip"])
def test_loss_scale_does_not_change_the_warmup_statistics(
    make_opt: Callable[[Any], torch.optim.Optimizer],
    clip: bool,
    fused_min: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the fused path step() sees gradients still multiplied by the loss scale (or, after
    scaler.unscale_ for clipping, unscaled with grad_scale=None); the warm-up divides by
    grad_scale, so scales and kurtosis match a run without any scaler."""
    monkeypatch.setenv(DEVICE_PATH_ON_CPU, fused_min)
    steps = list(range(8))
    model, opt, _ = _scaled_run(make_opt, steps, set(), clip=clip)
    plain_model, plain_opt, _ = _scaled_run(make_opt, steps, set(), scaler=False, clip=clip)
    for p, q in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        keys = ("warmup_scale", "warmup_cap", "warmup_update_ratio", "warmup_kurtosis",
                "warmup_drift", "exp_avg_sq")  # fmt: skip
        for key in keys:
            torch.testing.assert_close(
                opt.state[p][key], plain_opt.state[q][key], rtol=1e-5, atol=1e-7
            )
    assert float(torch.cat(opt.warmup_scale).min()) < 1


@pytest.mark.parametrize("mode", [{"foreach": False}, {"foreach": True}, {"fused": True}], ids=str)
@pytest.mark.parametrize("warmup", [None, "measured"])
def test_nan_gradient_without_a_scaler_poisons_params_as_torch_adam_does(
    mode: dict[str, bool], warmup: str | None
) -> None:
    """Current behaviour, documented: without a GradScaler a NaN gradient is not filtered (as in
    torch.optim.Adam) - the coordinate's moments and parameter become NaN at the same places as
    in torch and stay NaN. The warm-up numbers themselves stay finite (a NaN sum measures
    nothing), so the other tensors keep warming up."""
    ours, theirs = twins(SHAPES, init=SMALL)
    opt = warmopt.Adam(ours, lr=1e-2, warmup=warmup, **mode)
    ref = torch.optim.Adam(theirs, lr=1e-2, **mode)
    for t in range(6):
        feed([ours, theirs], t)
        if t == 2:
            for ps in (ours, theirs):
                assert ps[0].grad is not None
                ps[0].grad[1, 2] = float("nan")
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(torch.isnan(p), torch.isnan(q))
        if warmup is None:
            torch.testing.assert_close(p, q, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(ours[0][1, 2]) and torch.isnan(ours[0]).sum() == 1
    assert all(torch.isfinite(p).all() for p in ours[1:])
    if warmup is not None:
        for p in ours:
            for k, v in opt.state[p].items():
                if k.startswith("warmup_"):
                    assert torch.isfinite(v), k
        assert float(torch.cat(opt.warmup_scale).min()) > 0


# ---------------------------------------------------------------- torch.compile


@pytest.fixture
def fresh_dynamo():  # type: ignore[no-untyped-def]
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("cls", [warmopt.Adam, warmopt.RMSprop], ids=["adam", "rmsprop"])
def test_compiled_train_step_matches_eager(cls: type) -> None:
    """The whole train step (forward, backward, opt.step) under torch.compile (aot_eager: the
    AOT-autograd trace without the C++ codegen) with a tensor lr equals eager within float32
    rounding: the compiled functional optimizers take the capturable-style code path."""
    model, twin = _model(), _model()
    opt = cls(model.parameters(), lr=torch.tensor(1e-2))
    ref = cls(twin.parameters(), lr=torch.tensor(1e-2))

    def train_step(m: torch.nn.Module, o: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
        loss = m(x).square().mean()
        loss.backward()
        o.step()
        return loss.detach()

    compiled = torch.compile(train_step, backend="aot_eager")
    for t in range(6):
        opt.zero_grad()
        ref.zero_grad()
        _close(compiled(model, opt, _batch(t)), train_step(twin, ref, _batch(t)))
        for p, q in zip(model.parameters(), twin.parameters()):
            _close(p, q)
        for s, r in zip(opt.warmup_scale, ref.warmup_scale):
            _close(s, r)
    assert float(torch.cat(opt.warmup_scale).max()) < 1  # compared during the warm-up


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize(
    "warmup,decay", [("measured", 0.7), (v1(), 0.95)], ids=["measured", "v1"]
)
def test_compiled_step_does_not_recompile_as_the_scale_and_lr_change(
    warmup: Any, decay: float
) -> None:
    """What is realistic: step 1 compiles (with graph breaks: torch's _init_group is
    compiler-disabled for subclasses, and the host read of "warm-up finished" is data
    dependent), step 2 recompiles once because step 1 created the state (as for torch's own
    optimizers), and after that no step recompiles while the scales move every step and a
    scheduler fills the tensor lr. (The default's scale is a running maximum of max_update over
    the relative step: a decay of lr by 0.7 a step makes it rise on every step.)"""
    from torch._dynamo.testing import CompileCounter

    (ours,) = twins(SHAPES, n=1, init=TINY)
    opt = warmopt.Adam(ours, lr=torch.tensor(1e-2), warmup=warmup)
    sched = lrs.LambdaLR(opt, lambda t: decay**t)
    counter = CompileCounter()

    @torch.compile(backend=counter)
    def step() -> None:
        opt.step()

    frames, scales = [], []
    for t in range(10):
        feed([ours], t)
        step()
        sched.step()
        frames.append(counter.frame_count)
        scales.append(opt.warmup_scale[0].clone())
    assert frames[2:] == [frames[1]] * 8, frames
    assert frames[1] <= 4, frames  # a handful of graphs, not one per step
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(scales[2:]))  # scale moved
    assert float(opt.param_groups[0]["lr"]) < 1e-2  # and so did lr
    assert float(scales[-1].max()) < 1  # still warming


def _compiled_frames(opt: torch.optim.Optimizer, ours: list[Any], steps: int) -> list[int]:
    """Step ``opt`` ``steps`` times under torch.compile; dynamo's frame count after each step."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()

    @torch.compile(backend=counter)
    def step() -> None:
        opt.step()

    frames = []
    for t in range(steps):
        feed([ours], t)
        step()
        frames.append(counter.frame_count)
    return frames


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_step_recompiles_once_when_the_warmup_ends() -> None:
    """When every scale has reached 1 the step becomes torch's (a host-side flag read without a
    sync): one more compilation, then none."""
    (ours,) = twins(SHAPES, n=1)
    opt = warmopt.Adam(ours, lr=torch.tensor(1e-2), warmup=warmopt.Linear(4))
    frames = _compiled_frames(opt, ours, 10)
    assert opt._warmup_done
    assert len(set(frames[1:])) <= 2 and frames[-1] - frames[1] <= 1, frames
    assert frames[-5:] == [frames[-1]] * 5, frames


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_step_stops_recompiling_once_the_default_watches() -> None:
    """The default at scale 1 measures one step in 2, 4, 8, 16: a measured and an unmeasured step
    are two graphs, each compiled once; after the first cycles nothing recompiles."""
    (ours,) = twins(SHAPES, n=1)
    opt = warmopt.Adam(ours, lr=torch.tensor(1e-4))
    frames = _compiled_frames(opt, ours, 80)
    assert opt._warmup_done and opt._book.interval == 16  # type: ignore[attr-defined]
    assert frames[-50:] == [frames[-1]] * 50, frames
    assert frames[-1] <= 12, frames


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_inductor_compiled_step_matches_eager() -> None:
    """The default backend (inductor, C++ codegen on CPU). Slow: about 50 s of C++ compilation on
    a 2-core machine with a cold cache."""
    ours, theirs = twins(SHAPES, init=SMALL)
    opt = warmopt.Adam(ours, lr=torch.tensor(1e-2))
    ref = warmopt.Adam(theirs, lr=torch.tensor(1e-2))

    @torch.compile
    def step() -> None:
        opt.step()

    for t in range(6):
        feed([ours, theirs], t)
        step()
        ref.step()
        for p, q in zip(ours, theirs):
            _close(p, q)
        _close(opt.warmup_scale[0], ref.warmup_scale[0])
    assert float(opt.warmup_scale[0].max()) < 1  # compared during the warm-up


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
@pytest.mark.parametrize("warmup", [None, "measured"])
def test_capturable_step_replays_in_a_cuda_graph(warmup: str | None) -> None:
    """capturable=True: the step (warm-up included) is captured once and replayed; the replays
    follow an eager twin."""
    dev = torch.device("cuda")
    ours, theirs = (
        [p.detach().to(dev).requires_grad_() for p in ps] for ps in twins(SHAPES, init=SMALL)
    )
    kw: dict[str, Any] = {"lr": torch.tensor(1e-2, device=dev), "capturable": True, "foreach": True}
    opt = warmopt.Adam(ours, warmup=warmup, **kw)
    ref = warmopt.Adam(theirs, warmup=warmup, **kw)
    gens = [torch.Generator().manual_seed(7)]

    def grads() -> list[torch.Tensor]:
        return [torch.randn(p.shape, generator=gens[0]).to(dev) for p in ours]

    static = grads()
    for p, q, g in zip(ours, theirs, static):
        p.grad, q.grad = g, g.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up iterations on a side stream, as torch recommends
        for _ in range(3):
            opt.step()
            ref.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(5):
        new = grads()
        for g, n, q in zip(static, new, theirs):
            g.copy_(n)
            q.grad = n.clone()
        graph.replay()
        ref.step()
    torch.cuda.synchronize()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(opt.warmup_scale[0], ref.warmup_scale[0])
    if warmup is not None:
        assert float(opt.warmup_scale[0].max()) < 1  # the replays were warming steps
