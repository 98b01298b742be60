"""Checkpoints: exact resume, torch.save/load(weights_only=True), torch <-> warmopt, copies."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import warmopt

from .cases import MODES, WARMUP_KEYS, feed, twins, v1

SHAPES = [(6, 4), (5,), (), (3, 2, 2)]
#: RMS of the parameters' entries where a test needs the default policy to be warming: the cap
#: binds at lr 1e-2 (Adam's first relative step is lr / 0.05 = 0.2, ten times max_update)
SMALL = 0.05

CONFIGS = [
    pytest.param(warmopt.Adam, {"lr": 1e-2}, "single", id="adam-single"),
    pytest.param(warmopt.Adam, {"lr": 1e-2, "amsgrad": True}, "foreach", id="adam-amsgrad-foreach"),
    pytest.param(warmopt.Adam, {"lr": 1e-2}, "fused", id="adam-fused"),
    pytest.param(warmopt.AdamW, {"lr": 1e-2}, "foreach", id="adamw-foreach"),
    pytest.param(warmopt.RMSprop, {"lr": 1e-2, "momentum": 0.5}, "foreach", id="rmsprop-foreach"),
    pytest.param(warmopt.RMSprop, {"lr": 1e-2, "centered": True}, "single", id="rmsprop-single"),
    # without momentum: the running gradient average warmup_grad_avg (window-sized state)
    pytest.param(warmopt.RMSprop, {"lr": 1e-2}, "foreach", id="rmsprop-grad-avg-foreach"),
    pytest.param(
        warmopt.RMSprop, {"lr": 1e-2, "alpha": 0.9}, "single", id="rmsprop-grad-avg-single"
    ),
    # the relative step on each tensor's first 5 coordinates (and RMSprop's average on them)
    pytest.param(
        warmopt.Adam, {"lr": 1e-2, "warmup": warmopt.Measured(sample=5)}, "foreach",
        id="adam-window-foreach",
    ),
    pytest.param(
        warmopt.RMSprop, {"lr": 1e-2, "warmup": warmopt.Measured(sample=5)}, "single",
        id="rmsprop-window-single",
    ),
    # the previous default, whose numbers are the fresh-ratio statistics
    pytest.param(warmopt.Adam, {"lr": 1e-2, "warmup": v1()}, "single", id="adam-v1-single"),
    # windows of 5 coordinates: keyed on each tensor's step count, so a resumed run measures the
    # same windows as the uninterrupted one
    pytest.param(
        warmopt.Adam,
        {"lr": 1e-2, "warmup": v1(sample=5)},
        "foreach",
        id="adam-v1-sampled-foreach",
    ),
]


def _round_trip(obj: Any, path: Path | None = None) -> Any:
    """torch.save then torch.load(weights_only=True), through a file or a BytesIO."""
    if path is not None:
        torch.save(obj, path)
        return torch.load(path, weights_only=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _assert_same_run(
    a: list[torch.Tensor],
    b: list[torch.Tensor],
    opt_a: torch.optim.Optimizer,
    opt_b: torch.optim.Optimizer,
) -> None:
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()
        sa, sb = opt_a.state[x], opt_b.state[y]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
            assert sa[key].dtype == sb[key].dtype, key
    for sa_, sb_ in zip(opt_a.warmup_scale, opt_b.warmup_scale):  # type: ignore[attr-defined]
        assert torch.equal(sa_, sb_)


@pytest.mark.parametrize("cls,kwargs,mode", CONFIGS)
@pytest.mark.parametrize("through", ["memory", "file"])
def test_resume_mid_warmup_follows_the_uninterrupted_run_exactly(
    cls: type, kwargs: dict[str, Any], mode: str, through: str, tmp_path: Path
) -> None:
    ours, resumed = twins(SHAPES, init=SMALL)
    opt = cls(ours, **kwargs, **MODES[mode])
    for t in range(5):
        feed([ours], t, none_every=3)
        opt.step()
    assert float(torch.cat(opt.warmup_scale).min()) < 0.9  # still warming up
    averaged = cls is warmopt.RMSprop and not kwargs.get("momentum")
    if averaged:  # the running gradient average, on each tensor's first `sample` coordinates
        window = getattr(kwargs.get("warmup"), "sample", 4096)
        for p in ours:
            assert opt.state[p]["warmup_grad_avg"].numel() == min(p.numel(), window)
    ckpt = _round_trip(
        {"params": [p.detach().clone() for p in ours], "opt": opt.state_dict()},
        tmp_path / "ckpt.pt" if through == "file" else None,
    )

    with torch.no_grad():
        for p, saved in zip(resumed, ckpt["params"]):
            p.copy_(saved)
    fresh = cls(resumed, **kwargs, **MODES[mode])
    fresh.load_state_dict(ckpt["opt"])
    keys = (*WARMUP_KEYS, "warmup_grad_avg") if averaged else WARMUP_KEYS
    for key in keys:
        assert fresh.state[resumed[0]][key].dtype == torch.float32
    _assert_same_run(ours, resumed, opt, fresh)

    for t in range(5, 14):
        feed([ours, resumed], t, none_every=3)
        opt.step()
        fresh.step()
        _assert_same_run(ours, resumed, opt, fresh)
    assert float(torch.cat(fresh.warmup_scale).min()) < 1.0  # warmed all along


def test_resume_after_the_warmup_ended_stays_exact() -> None:
    """The uninterrupted run knows warm-up is over (torch's step, no lerp); the resumed one does
    not before its first step (a step-count policy has no numbers of its own to tell it; a step
    at scale 1 is a lerp by 0). Both give the same numbers."""
    ours, resumed = twins(SHAPES)
    opt = warmopt.Adam(ours, lr=1e-2, warmup=warmopt.Linear(3))
    for t in range(6):
        feed([ours], t)
        opt.step()
    assert opt._warmup_done
    ckpt = _round_trip({"params": [p.detach().clone() for p in ours], "opt": opt.state_dict()})
    with torch.no_grad():
        for p, saved in zip(resumed, ckpt["params"]):
            p.copy_(saved)
    fresh = warmopt.Adam(resumed, lr=1e-2, warmup=warmopt.Linear(3))
    fresh.load_state_dict(ckpt["opt"])
    assert not fresh._warmup_done
    for t in range(6, 10):
        feed([ours, resumed], t)
        opt.step()
        fresh.step()
        _assert_same_run(ours, resumed, opt, fresh)


COPIES = ["state_dict", "deepcopy", "pickle"]


def _resumed(
    how: str, cls: type, kwargs: dict[str, Any], ours: list[torch.nn.Parameter],
    resumed: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:  # fmt: skip
    """The run of ``ours``/``opt`` carried on ``how``: a new optimizer on ``resumed`` (set to
    ``ours``) loading a checkpoint of ``opt``, or a deepcopy or pickle of both."""
    if how == "state_dict":
        ckpt = _round_trip(opt.state_dict())
        with torch.no_grad():
            for p, q in zip(ours, resumed):
                q.copy_(p)
        fresh = cls(resumed, **kwargs)
        fresh.load_state_dict(ckpt)
        return resumed, fresh
    if how == "deepcopy":
        return copy.deepcopy((ours, opt))  # type: ignore[no-any-return]
    return pickle.loads(pickle.dumps((ours, opt)))  # type: ignore[no-any-return]
#: the ramp (the scale never falls, and the warm-up ends the first time every scale is 1)
RAMP = warmopt.Measured(rewarm=False)


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        pytest.param(warmopt.Adam, {"lr": 1e-2, "warmup": RAMP}, id="adam"),
        pytest.param(warmopt.RMSprop, {"lr": 1e-3, "warmup": RAMP}, id="rmsprop-grad-avg"),
        pytest.param(warmopt.Adam, {"lr": 1e-2, "warmup": v1()}, id="adam-v1"),
    ],
)
@pytest.mark.parametrize("how", COPIES)
def test_resume_after_the_ramp_ended_keeps_its_numbers(
    cls: type, kwargs: dict[str, Any], how: str
) -> None:
    """Once every scale of the ramp (``rewarm=False``) is 1 the uninterrupted run steps as torch
    and its warm-up numbers stay as they were (``warmup_update_ratio``, RMSprop's
    ``warmup_grad_avg``, V1's kurtosis). A run
    loaded from its checkpoint, or a copy of it, learns from the loaded scales that the warm-up
    is over and keeps them too, instead of taking one more warming step that rewrites them."""
    ours, resumed = twins(SHAPES, init=SMALL)
    opt = cls(ours, **kwargs)
    t = 0
    while not opt._warmup_done:  # the scales reach 1, then the host learns it
        feed([ours], t)
        opt.step()
        t += 1
        assert t < 300
    frozen = {k: v.clone() for k, v in opt.state[ours[0]].items() if k.startswith("warmup_")}
    resumed, fresh = _resumed(how, cls, kwargs, ours, resumed, opt)
    for u in range(t, t + 3):
        feed([ours, resumed], u)
        opt.step()
        fresh.step()
        _assert_same_run(ours, resumed, opt, fresh)
    assert fresh._warmup_done
    for key, value in frozen.items():
        assert torch.equal(fresh.state[resumed[0]][key], value), key


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        pytest.param(warmopt.Adam, {"lr": 1e-3}, id="adam"),
        pytest.param(warmopt.RMSprop, {"lr": 1e-4}, id="rmsprop-grad-avg"),
    ],
)
@pytest.mark.parametrize("how", COPIES)
def test_resume_while_the_default_watches_steps_as_the_uninterrupted_run(
    cls: type, kwargs: dict[str, Any], how: str
) -> None:
    """Once every scale of the default is 1 it watches (measured steps 2, 4, ... 16 apart). A run
    loaded from its checkpoint, or a copy, measures its next step again and then watches anew:
    on which steps it measures may differ, what it steps may not -- the same parameters and
    torch moments as the uninterrupted run, bit for bit, at scale 1 (weights of unit size, whose
    full steps stay far below the cap)."""
    ours, resumed = twins(SHAPES)
    opt = cls(ours, **kwargs)
    t = 0
    while opt._book.interval < 8:  # watching, measured steps 8 apart
        feed([ours], t)
        opt.step()
        t += 1
        assert t < 400
    resumed, fresh = _resumed(how, cls, kwargs, ours, resumed, opt)
    for u in range(t, t + 40):
        feed([ours, resumed], u)
        opt.step()
        fresh.step()
        for x, y in zip(ours, resumed):
            assert torch.equal(x, y), u
            for key, value in opt.state[x].items():
                if not key.startswith("warmup_"):
                    assert torch.equal(value, fresh.state[y][key]), (u, key)
        assert torch.cat(opt.warmup_scale).eq(1).all() and torch.cat(fresh.warmup_scale).eq(1).all()
    assert fresh._warmup_done


def test_a_loaded_checkpoint_of_another_policy_at_scale_one_still_warms() -> None:
    """The loaded scales end the warm-up only where the checkpoint has the policy's own numbers:
    a warm-up of ``Constant`` (scale 1 at once) loaded into the default starts it from the step
    counts, as a plain torch checkpoint would."""
    ours, resumed = twins(SHAPES, init=SMALL)
    opt = warmopt.Adam(ours, lr=1e-2, warmup="constant")
    feed([ours], 0)
    opt.step()
    ckpt = _round_trip(opt.state_dict())
    with torch.no_grad():
        for p, q in zip(ours, resumed):
            q.copy_(p)
    fresh = warmopt.Adam(resumed, lr=1e-2)
    fresh.load_state_dict(ckpt)
    feed([resumed], 1)
    fresh.step()
    assert float(torch.cat(fresh.warmup_scale).max()) < 1.0
    assert not fresh._warmup_done


def test_loaded_rmsprop_keeps_stepping_as_rmsprop() -> None:
    """Regression: torch's load_state_dict calls __setstate__, which used to reset the algorithm
    to Adam (KeyError: 'exp_avg' on the next step)."""
    ((p,),) = twins([(3,)], n=1)
    opt = warmopt.RMSprop([p], lr=1e-2)
    p.grad = torch.ones(3)
    opt.step()
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt.step()
    assert opt._algorithm.name == "rmsprop"
    assert set(opt.state[p]) >= {"square_avg", "warmup_scale"} and "exp_avg" not in opt.state[p]


# ---------------------------------------------------------------- torch <-> warmopt checkpoints

TORCH_TWINS = [
    pytest.param(torch.optim.Adam, warmopt.Adam, id="Adam"),
    pytest.param(torch.optim.AdamW, warmopt.AdamW, id="AdamW"),
    pytest.param(torch.optim.RMSprop, warmopt.RMSprop, id="RMSprop"),
]


@pytest.mark.parametrize("torch_cls,ours_cls", TORCH_TWINS)
def test_torch_checkpoint_early_in_training_loads_and_training_continues(
    torch_cls: type, ours_cls: type
) -> None:
    theirs, ours = twins(SHAPES, init=SMALL)
    ref = torch_cls(theirs, lr=1e-2)
    for t in range(3):
        feed([theirs], t)
        ref.step()
    ckpt = _round_trip(ref.state_dict())
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            p.copy_(q)
    opt = ours_cls(ours, lr=1e-2)
    opt.load_state_dict(ckpt)
    # the warm-up state is created on the next step, not on load
    assert not any(k.startswith("warmup_") for st in opt.state.values() for k in st)
    assert all(torch.equal(s, torch.zeros_like(s)) for s in opt.warmup_scale)
    for t in range(3, 8):
        feed([ours], t)
        opt.step()
        scales = torch.cat(opt.warmup_scale)
        assert ((scales >= 0) & (scales <= 1)).all()
        assert all(torch.isfinite(p).all() for p in ours)
        if t == 3:
            assert float(scales.max()) < 1.0  # the step these moments give: the cap binds
    assert all(float(opt.state[p]["step"]) == 8 for p in ours)
    assert all(set(WARMUP_KEYS[:1]) <= set(opt.state[p]) for p in ours)


@pytest.mark.parametrize("policy", ["measured", v1()], ids=["default", "v1"])
@pytest.mark.parametrize("torch_cls,ours_cls", TORCH_TWINS)
def test_warmup_after_a_2000_step_torch_checkpoint_restarts_from_its_step_count(
    torch_cls: type, ours_cls: type, policy: Any
) -> None:
    """A long-trained torch checkpoint has a settled second moment: the policy, restarting from
    the saved step count, goes to (near) 1 at once instead of restarting at the first step's
    scale. The default: the step those moments give is small against the weights (entries of RMS
    0.005 at the start, ~0.04 after the 2000 steps), where a fresh run's first step at the same lr
    is 10 times max_update; the previous default: n_eff at step 2000 is large."""
    theirs, ours, new = twins([(8, 4), (4,)], n=3, init=0.005)
    ref = torch_cls(theirs, lr=1e-3)
    for t in range(2000):
        feed([theirs], t)
        ref.step()
    ckpt = _round_trip(ref.state_dict())
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            p.copy_(q)
    opt = ours_cls(ours, lr=1e-3, warmup=policy)
    opt.load_state_dict(ckpt)
    start = ours_cls(new, lr=1e-3, warmup=policy)  # a fresh run for contrast
    feed([ours, new], 2000)
    opt.step()
    start.step()
    scale = torch.cat(opt.warmup_scale)
    assert float(scale.min()) >= 0.99, scale
    fresh_scale = torch.cat(start.warmup_scale)
    assert float(fresh_scale.max()) < 0.2, fresh_scale
    for t in range(2001, 2004):
        feed([ours], t)
        opt.step()
        assert float(torch.cat(opt.warmup_scale).min()) >= 0.99
    assert all(float(opt.state[p]["step"]) == 2004 for p in ours)


@pytest.mark.parametrize("torch_cls,ours_cls", TORCH_TWINS)
def test_warmopt_checkpoint_loads_into_the_plain_torch_optimizer(
    torch_cls: type, ours_cls: type
) -> None:
    """torch keeps the extra warmup_* keys as opaque state and steps as if they were not there."""
    ours, theirs, control = twins(SHAPES, n=3, init=SMALL)
    opt = ours_cls(ours, lr=1e-2)
    for t in range(4):
        feed([ours], t)
        opt.step()
    assert float(torch.cat(opt.warmup_scale).min()) < 1.0  # saved mid-warm-up
    ckpt = _round_trip(opt.state_dict())
    stripped = copy.deepcopy(ckpt)
    for st in stripped["state"].values():
        for key in WARMUP_KEYS:
            st.pop(key, None)
    with torch.no_grad():
        for p, q, r in zip(ours, theirs, control):
            q.copy_(p)
            r.copy_(p)
    ref = torch_cls(theirs, lr=1e-2)
    ref.load_state_dict(ckpt)
    plain = torch_cls(control, lr=1e-2)
    plain.load_state_dict(stripped)
    for t in range(4, 7):
        feed([theirs, control], t)
        ref.step()
        plain.step()
    for q, r in zip(theirs, control):
        assert torch.equal(q, r)
        assert torch.isfinite(q).all()
    assert "warmup_scale" in ref.state[theirs[0]]


# ---------------------------------------------------------------- copies


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda ps: warmopt.Adam(ps, lr=1e-2), id="adam"),
        pytest.param(lambda ps: warmopt.RMSprop(ps, lr=1e-2, momentum=0.9), id="rmsprop"),
        pytest.param(
            lambda ps: warmopt.AdamW(ps, lr=1e-2, warmup="radam", granularity="group"),
            id="adamw-radam-group",
        ),
        pytest.param(
            lambda ps: warmopt.WarmupOptimizer(
                torch.optim.RMSprop(ps, lr=1e-2), warmup=warmopt.Measured(max_update=0.01)
            ),
            id="wrapped-rmsprop",
        ),
    ],
)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_deepcopy_and_pickle_continue_identically(make: Any, how: str) -> None:
    (ours,) = twins(SHAPES, n=1, init=SMALL)
    opt = make(ours)
    for t in range(3):
        feed([ours], t)
        opt.step()
    assert float(torch.cat(opt.warmup_scale).min()) < 1.0  # copied mid-warm-up
    if how == "deepcopy":
        params2, opt2 = copy.deepcopy((ours, opt))
    else:
        params2, opt2 = pickle.loads(pickle.dumps((ours, opt)))
    assert type(opt2) is type(opt)
    assert opt2.warmup == opt.warmup and opt2.granularity == opt.granularity
    assert opt2._algorithm is opt._algorithm
    assert opt2.param_groups[0]["params"][0] is params2[0]
    for t in range(3, 9):
        feed([ours, params2], t)
        opt.step()
        opt2.step()
        _assert_same_run(ours, params2, opt, opt2)


# ---------------------------------------------------------------- another policy or granularity

POLICY_NAMES = [
    "measured",
    "radam",
    "untuned_linear",
    "untuned_exponential",
    "linear",
    "constant",
    "none",
]


def _strip_warmup(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint as a plain torch optimizer would have saved it."""
    plain = copy.deepcopy(ckpt)
    for st in plain["state"].values():
        for key in [k for k in st if k.startswith("warmup_")]:
            del st[key]
    return plain


@pytest.mark.parametrize("target", POLICY_NAMES)
@pytest.mark.parametrize("source", POLICY_NAMES)
def test_a_checkpoint_of_another_policy_resumes_as_a_plain_torch_checkpoint(
    source: str, target: str
) -> None:
    """Same policy: exact resume. Another one: the keys the new policy does not use are dropped,
    the missing ones start fresh, so the run continues exactly as from the same checkpoint
    without any warm-up state (the scale follows from the step counts)."""
    saved, resumed, control = twins(SHAPES, n=3, init=SMALL)
    opt = warmopt.Adam(saved, lr=1e-2, warmup=source)
    for t in range(4):
        feed([saved], t)
        opt.step()
    ckpt = _round_trip(opt.state_dict())
    with torch.no_grad():
        for p, q, r in zip(saved, resumed, control):
            q.copy_(p)
            r.copy_(p)
    new = warmopt.Adam(resumed, lr=1e-2, warmup=target)
    new.load_state_dict(ckpt)
    if source == target:
        ref, ref_params = opt, saved  # the uninterrupted run
    else:
        ref = warmopt.Adam(control, lr=1e-2, warmup=target)
        ref.load_state_dict(_strip_warmup(ckpt))
        ref_params = control
    used = set() if target == "none" else {"warmup_scale"}
    if target == "measured":
        used |= set(WARMUP_KEYS)
    for t in range(4, 7):
        feed([resumed, ref_params], t)
        new.step()
        ref.step()
        _assert_same_run(resumed, ref_params, new, ref)
        scales = torch.cat(new.warmup_scale)
        assert torch.isfinite(scales).all() and ((scales >= 0) & (scales <= 1)).all(), scales
        for p in resumed:
            assert {k for k in new.state[p] if k.startswith("warmup_")} == used
    if target == "none":
        assert all(torch.equal(s, torch.ones_like(s)) for s in new.warmup_scale)


def _groups(ps: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-2}]


@pytest.mark.parametrize(
    "policy,ramp",
    [("measured", None), (RAMP, "warmup_cap"), (v1(), "warmup_confidence")],
    ids=["default", "ramp", "v1"],
)
@pytest.mark.parametrize("target", warmopt.GRANULARITIES)
@pytest.mark.parametrize("source", warmopt.GRANULARITIES)
def test_a_checkpoint_of_another_granularity_pools_into_the_new_units(
    source: str, target: str, policy: Any, ramp: str
) -> None:
    """The per-tensor numbers are pooled into the new units on the next step: one scale per
    unit, and for a ramp each unit at least as far along (the ramp's cap, V1's confidence) as
    its least-warmed tensor was."""
    saved, resumed = twins(SHAPES, init=SMALL)
    opt = warmopt.Adam(_groups(saved), lr=1e-2, granularity=source, warmup=policy)
    for t in range(6):
        feed([saved], t)
        opt.step()
    assert float(torch.cat(opt.warmup_scale).min()) < 1.0  # saved mid-warm-up
    ckpt = _round_trip(opt.state_dict())
    with torch.no_grad():
        for p, q in zip(saved, resumed):
            q.copy_(p)
    new = warmopt.Adam(_groups(resumed), lr=1e-2, granularity=target, warmup=policy)
    new.load_state_dict(ckpt)
    before = [float(new.state[p][ramp or "warmup_scale"]) for p in resumed]
    unit = {
        "tensor": list(range(len(resumed))),
        "group": [0, 0] + [1] * (len(resumed) - 2),
        "global": [0] * len(resumed),
    }[target]
    for t in range(6, 9):
        feed([saved, resumed], t)
        opt.step()
        new.step()
        if source == target:
            _assert_same_run(saved, resumed, opt, new)
    scales = torch.cat(new.warmup_scale).tolist()
    assert all(0 < s <= 1 for s in scales), scales
    for j, u in enumerate(unit):
        members = [i for i, v in enumerate(unit) if v == u]
        assert all(scales[i] == scales[j] for i in members), (target, scales)
        if ramp is not None:
            floor = min(before[i] for i in members)
            assert float(new.state[resumed[j]][ramp]) >= floor
