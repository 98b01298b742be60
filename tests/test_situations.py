"""Closures, hooks and zero_grad as in torch; parameters without gradients, mixed dtypes, complex
parameters and maximize=True under the warm-up."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import warmopt

from .cases import MODES, WARMUP_KEYS, feed, twins, v1

SHAPES = [(6, 4), (5,), (3, 3)]
#: the RMS of the weights where a test needs the default to warm: a full Adam step at lr 1e-2
#: moves them by ~100 %, far above its 2 % cap (unit-sized weights take torch's step at once)
SMALL = 0.01


def _state_copy(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in opt.state[p].items()}


# ---------------------------------------------------------------- closures


@pytest.mark.parametrize(
    "cls,ref_cls", [(warmopt.Adam, torch.optim.Adam), (warmopt.RMSprop, torch.optim.RMSprop)]
)
def test_step_with_closure_returns_the_loss_and_runs_with_grad_enabled(
    cls: type, ref_cls: type
) -> None:
    ours, theirs = twins(SHAPES)
    opt, ref = cls(ours, lr=1e-2, warmup=None), ref_cls(theirs, lr=1e-2)
    x = torch.randn(6, generator=torch.Generator().manual_seed(3))
    grad_modes: list[bool] = []

    def closure_for(ps: list[torch.Tensor], o: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
        def closure() -> torch.Tensor:
            grad_modes.append(torch.is_grad_enabled())
            o.zero_grad()
            loss = (ps[0] @ x[:4]).square().sum() + ps[1].sum() + ps[2].norm()
            loss.backward()
            return loss

        return closure

    for _ in range(4):
        with torch.no_grad():
            loss = opt.step(closure_for(ours, opt))
            ref_loss = ref.step(closure_for(theirs, ref))
        assert isinstance(loss, torch.Tensor) and torch.equal(loss, ref_loss)
    assert grad_modes == [True] * 8
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
    assert opt.step() is None  # no closure: None, as torch


def test_closure_is_called_exactly_once_per_step_with_warmup() -> None:
    (ours,) = twins(SHAPES, n=1)
    opt = warmopt.Adam(ours, lr=1e-2)
    calls = []

    def closure() -> float:
        calls.append(1)
        for p in ours:
            p.grad = torch.ones_like(p)
        return 1.5

    assert opt.step(closure) == 1.5
    assert len(calls) == 1 and float(opt.warmup_scale[0][0]) > 0


# ---------------------------------------------------------------- hooks


def test_step_pre_and_post_hooks_fire_in_order_and_can_be_removed() -> None:
    (ours,) = twins(SHAPES, n=1)
    opt = warmopt.Adam(ours, lr=1e-2)
    events: list[str] = []

    def pre(o: Any, args: Any, kwargs: Any) -> None:
        assert o is opt
        events.append("pre:" + ("warm" if "warmup_scale" in o.state.get(ours[0], {}) else "new"))

    def post(o: Any, args: Any, kwargs: Any) -> None:
        events.append(f"post:{float(o.state[ours[0]]['step']):.0f}")

    h1, h2 = opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)
    g1 = register_optimizer_step_pre_hook(lambda o, a, k: events.append("global-pre"))
    g2 = register_optimizer_step_post_hook(lambda o, a, k: events.append("global-post"))
    try:
        for t in range(2):
            feed([ours], t)
            opt.step()
    finally:
        g1.remove()
        g2.remove()
    assert events == [
        "global-pre", "pre:new", "post:1", "global-post",
        "global-pre", "pre:warm", "post:2", "global-post",
    ]  # fmt: skip
    h1.remove()
    h2.remove()
    feed([ours], 2)
    opt.step()
    assert len(events) == 8


def test_step_pre_hook_can_replace_the_arguments() -> None:
    (ours,) = twins(SHAPES, n=1)
    opt = warmopt.Adam(ours, lr=1e-2)

    def closure() -> str:
        feed([ours], 0)
        return "from-hook"

    # args include the optimizer itself, as torch passes them
    opt.register_step_pre_hook(lambda o, args, kwargs: ((o, closure), {}))
    assert opt.step() == "from-hook"
    assert float(opt.state[ours[0]]["step"]) == 1


def test_state_dict_and_load_state_dict_hooks_fire() -> None:
    ours, theirs = twins(SHAPES)
    opt = warmopt.Adam(ours, lr=1e-2)
    feed([ours], 0)
    opt.step()
    events: list[str] = []

    opt.register_state_dict_pre_hook(lambda o: events.append("sd-pre"))

    def sd_post(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
        events.append("sd-post")
        sd["note"] = "added by hook"
        return sd

    opt.register_state_dict_post_hook(sd_post)
    sd = opt.state_dict()
    assert sd["note"] == "added by hook" and "warmup_scale" in sd["state"][0]

    twin = warmopt.Adam(theirs, lr=1e-2)

    def load_pre(o: Any, sd: dict[str, Any]) -> dict[str, Any]:
        events.append("load-pre")
        sd = copy.deepcopy(sd)
        sd.pop("note")
        for st in sd["state"].values():
            st["warmup_scale"] = torch.tensor(0.5)  # the hook may rewrite what is loaded
        return sd

    twin.register_load_state_dict_pre_hook(load_pre)
    twin.register_load_state_dict_post_hook(lambda o: events.append("load-post"))
    twin.load_state_dict(sd)
    assert events == ["sd-pre", "sd-post", "load-pre", "load-post"]
    assert float(twin.state[theirs[0]]["warmup_scale"]) == 0.5
    assert twin.state[theirs[0]]["warmup_scale"].dtype == torch.float32


@pytest.mark.parametrize("set_to_none", [True, False, None], ids=["none", "zeros", "default"])
def test_zero_grad_as_torch(set_to_none: bool | None) -> None:
    ours, theirs = twins(SHAPES)
    opt, ref = warmopt.Adam(ours), torch.optim.Adam(theirs)
    feed([ours, theirs], 0)
    opt.step()
    ref.step()
    kw = {} if set_to_none is None else {"set_to_none": set_to_none}
    opt.zero_grad(**kw)
    ref.zero_grad(**kw)
    for p, q in zip(ours, theirs):
        if set_to_none is False:
            assert p.grad is not None and q.grad is not None
            assert torch.equal(p.grad, torch.zeros_like(p)) and torch.equal(p.grad, q.grad)
        else:
            assert p.grad is None and q.grad is None
    # a zeroed gradient is a real step (step count advances), a None gradient is not
    opt.step()
    assert float(opt.state[ours[0]]["step"]) == (1 if set_to_none in (True, None) else 2)


# ---------------------------------------------------------------- parameters without gradients


@pytest.mark.parametrize("policy", ["default", "v1"])
@pytest.mark.parametrize("mode", ["single", "foreach", "fused"])
@pytest.mark.parametrize("granularity", ["tensor", "group", "global"])
def test_a_parameter_without_gradient_keeps_its_warmup_state_paused(
    mode: str, granularity: str, policy: str
) -> None:
    """The default on small weights (the cap binds; the vector follows the matrices' median) and
    the previous default (its kurtosis, evidence and drift move on every measured step)."""
    (ours,) = twins(SHAPES, n=1, init=SMALL)
    warmup = warmopt.Measured() if policy == "default" else v1()
    opt = warmopt.Adam(ours, lr=1e-2, granularity=granularity, warmup=warmup, **MODES[mode])
    for t in range(3):
        feed([ours], t)
        opt.step()
    paused = _state_copy(opt, ours[1])
    value = ours[1].detach().clone()
    for t in range(3, 8):
        feed([ours], t)
        ours[1].grad = None
        opt.step()
        assert torch.equal(ours[1], value)
        assert _state_copy(opt, ours[1]).keys() == paused.keys()
        for k, v in _state_copy(opt, ours[1]).items():
            assert torch.equal(v, paused[k]), k
    assert float(opt.state[ours[0]]["step"]) == 8 and float(opt.state[ours[1]]["step"]) == 3
    assert float(opt.state[ours[0]]["warmup_scale"]) > float(paused["warmup_scale"])
    assert float(opt.state[ours[0]]["warmup_scale"]) < 1  # still warming
    # and it resumes from where it paused
    feed([ours], 8)
    opt.step()
    assert float(opt.state[ours[1]]["step"]) == 4
    if policy == "v1":  # its own statistics gain the new sample
        moved = float(opt.state[ours[1]]["warmup_evidence"]) > float(paused["warmup_evidence"])
    else:  # it takes the matrices' median again, which rose while it was paused
        moved = float(opt.state[ours[1]]["warmup_cap"]) > float(paused["warmup_cap"])
    assert moved or granularity != "tensor"


def test_a_parameter_that_never_gets_a_gradient_has_no_state_and_reports_scale_zero() -> None:
    (ours,) = twins(SHAPES, n=1)
    opt = warmopt.Adam(ours, lr=1e-2)
    for t in range(4):
        feed([ours], t)
        ours[2].grad = None
        opt.step()
    assert ours[2] not in opt.state
    (scales,) = opt.warmup_scale
    assert float(scales[2]) == 0 and float(scales[0]) > 0
    assert "warmup_scale" not in opt.state_dict()["state"].get(2, {})


def test_a_tensor_paused_by_none_gradients_matches_the_same_tensor_stepped_alone() -> None:
    """Per-tensor warm-up: pausing one tensor does not change another's trajectory, and the
    paused tensor's own trajectory is that of an optimizer that only saw its gradients."""
    ours, alone = twins(SHAPES)
    opt = warmopt.Adam(ours, lr=1e-2, foreach=False)
    solo = warmopt.Adam([alone[1]], lr=1e-2, foreach=False)
    for t in range(10):
        feed([ours, alone], t, none_every=3)
        opt.step()
        if alone[1].grad is not None:
            solo.step()
    assert torch.equal(ours[1], alone[1])
    for k in WARMUP_KEYS:
        assert torch.equal(opt.state[ours[1]][k], solo.state[alone[1]][k]), k


# ---------------------------------------------------------------- dtypes, complex, maximize

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _mixed(seed: int = 0) -> list[torch.nn.Parameter]:
    """Small weights (``SMALL``), so that the default warms."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter((torch.randn(s, generator=gen, dtype=torch.float64) * SMALL).to(d))
        for s, d in zip([(6, 4), (5,), (3, 3)], DTYPES)
    ]


def _feed_mixed(sets: list[list[torch.nn.Parameter]], t: int) -> None:
    gen = torch.Generator().manual_seed(500 + t)
    for i, p in enumerate(sets[0]):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        for ps in sets:
            ps[i].grad = g.to(ps[i].dtype)


@pytest.mark.parametrize("mode", ["single", "foreach", "fused"])
def test_mixed_dtypes_in_one_group(mode: str) -> None:
    """float32 + float64 + bfloat16 in one group: warmup=None is torch's step exactly, and with
    the warm-up every tensor follows the run in which it is alone in its group, in a dtype
    bucket of its own (the statistics are per tensor, whatever the dtype buckets of the
    foreach/fused kernels; the vector follows the matrices' median in both), and each matrix
    the run in which it is the only parameter."""
    ours, theirs, plain, split = _mixed(), _mixed(), _mixed(), _mixed()
    singles = [[p] for p in _mixed()]
    opt = warmopt.Adam(ours, lr=1e-2, **MODES[mode])
    ref = torch.optim.Adam(theirs, lr=1e-2, **MODES[mode])
    off = warmopt.Adam(plain, lr=1e-2, warmup=None, **MODES[mode])
    apart = warmopt.Adam([{"params": [p]} for p in split], lr=1e-2, **MODES[mode])
    solos = [warmopt.Adam(ps, lr=1e-2, **MODES[mode]) for ps in singles]
    for t in range(8):
        _feed_mixed([ours, theirs, plain, split, [s[0] for s in singles]], t)
        for o in (opt, ref, off, apart, *solos):
            o.step()
    for p, q, r, a, (s,), solo in zip(ours, theirs, plain, split, singles, solos):
        assert p.dtype == q.dtype == a.dtype == s.dtype
        assert torch.equal(r, q)
        assert torch.isfinite(p).all()
        assert opt.state[p]["exp_avg"].dtype == p.dtype
        for k in WARMUP_KEYS:
            assert opt.state[p][k].dtype == torch.float32
        torch.testing.assert_close(
            opt.state[p]["warmup_scale"], apart.state[a]["warmup_scale"], rtol=1e-6, atol=0
        )
        torch.testing.assert_close(p, a, rtol=1e-6, atol=0)
        if p.dim() >= 2:  # a matrix's scale is its own
            torch.testing.assert_close(
                opt.state[p]["warmup_scale"], solo.state[s]["warmup_scale"], rtol=1e-6, atol=0
            )
            torch.testing.assert_close(p, s, rtol=1e-6, atol=0)
    scales = torch.cat(opt.warmup_scale)
    assert ((scales > 0) & (scales < 1)).all()


@pytest.mark.parametrize("mode", ["single", "foreach"])
@pytest.mark.parametrize("warmup", ["measured", "radam", "measured-windows"])
def test_complex_parameter_follows_its_real_view_twin(mode: str, warmup: str) -> None:
    """A complex tensor is warmed up as its real view (2 coordinates per element), so it follows
    a float parameter holding view_as_real of it exactly -- also when it is measured on windows
    (``sample=8`` of its 30 real coordinates: views into the real view's storage). The (5, 3)
    complex matrix leads (its real view is (5, 3, 2)), the real vector follows it; small weights,
    so that the default warms."""
    policy: object = warmopt.Measured(sample=8) if warmup == "measured-windows" else warmup
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(5, 3, dtype=torch.complex64, generator=gen) * SMALL
    z = torch.nn.Parameter(base.clone())
    r = torch.nn.Parameter(torch.view_as_real(base).clone())
    w_z, w_r = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    opt = warmopt.Adam([z, w_z], lr=1e-2, warmup=policy, **MODES[mode])  # type: ignore[arg-type]
    twin = warmopt.Adam([r, w_r], lr=1e-2, warmup=policy, **MODES[mode])  # type: ignore[arg-type]
    for _ in range(8):
        g = torch.randn(5, 3, dtype=torch.complex64, generator=gen)
        h = torch.randn(4, generator=gen)
        z.grad, r.grad = g.clone(), torch.view_as_real(g).clone()
        w_z.grad, w_r.grad = h.clone(), h.clone()
        opt.step()
        twin.step()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())
    assert torch.equal(w_z, w_r)
    for k in ("warmup_scale",) + (WARMUP_KEYS[1:] if warmup != "radam" else ()):
        assert torch.equal(opt.state[z][k], twin.state[r][k]), k
    assert 0 < float(opt.state[z]["warmup_scale"]) < 1
    assert 0 < float(opt.state[w_z]["warmup_scale"]) < 1


@pytest.mark.parametrize(
    "cls,kwargs,mode",
    [
        (warmopt.Adam, {}, "single"),
        (warmopt.Adam, {"amsgrad": True}, "foreach"),
        (warmopt.Adam, {}, "fused"),
        (warmopt.AdamW, {"weight_decay": 0.1}, "foreach"),
        (warmopt.RMSprop, {"momentum": 0.5, "centered": True}, "foreach"),
    ],
    ids=["adam-single", "adam-amsgrad-foreach", "adam-fused", "adamw-foreach", "rmsprop-foreach"],
)
def test_maximize_with_warmup_equals_minimizing_the_negated_gradient(
    cls: type, kwargs: dict[str, Any], mode: str
) -> None:
    up, down = twins(SHAPES, init=SMALL)  # small weights: the default warms
    opt = cls(up, lr=1e-2, maximize=True, **kwargs, **MODES[mode])
    ref = cls(down, lr=1e-2, **kwargs, **MODES[mode])
    for t in range(8):
        feed([up, down], t)
        for p in down:
            assert p.grad is not None
            p.grad.neg_()
        opt.step()
        ref.step()
    for p, q in zip(up, down):
        assert torch.equal(p, q)
        for k in opt.state[p]:
            assert torch.equal(opt.state[p][k], ref.state[q][k]), k
    assert float(torch.cat(opt.warmup_scale).min()) < 1


def test_load_state_dict_post_hook_sees_and_keeps_float32_warmup_state() -> None:
    """User post-hooks run after the float32 restore: they see the saved numbers (not their
    bfloat16 cast) and what they write stays."""
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    opt = warmopt.Adam([p], lr=1e-2)
    for t in range(3):
        p.grad = torch.full((3,), 0.1 * (t + 1), dtype=torch.bfloat16)
        opt.step()
    saved = opt.state_dict()
    exact = saved["state"][0]["warmup_scale"].clone()
    q = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    twin = warmopt.Adam([q], lr=1e-2)
    seen = []

    def post(o: Any) -> None:
        seen.append(o.state[q]["warmup_scale"].clone())
        o.state[q]["warmup_confidence"] = torch.tensor(1.0)

    twin.register_load_state_dict_post_hook(post)
    twin.load_state_dict(saved)
    assert seen[0].dtype == torch.float32 and torch.equal(seen[0], exact)
    assert float(twin.state[q]["warmup_confidence"]) == 1.0


@pytest.mark.parametrize(
    "policy,key", [("v1", "warmup_confidence"), ("default", "warmup_cap")], ids=["v1", "default"]
)
@pytest.mark.parametrize("how", ["in_place", "replaced"])
def test_warmup_state_written_by_the_user_is_what_the_next_step_reads(
    how: str, policy: str, key: str
) -> None:
    """The warmup_* entries are views of one vector per key (one op per key and step); writing
    into an entry, or replacing it with a new tensor (as a checkpoint loader does), must both
    reach the policy on the next step, and the other tensors must be unaffected. The first
    default's confidence (vectors), and the ramp's cap (small matrices, so that it binds; the
    ramp reads its cap back, the default recomputes it every step)."""
    if policy == "v1":
        shape, init, warmup = (6,), 1.0, v1()
    else:
        shape, init, warmup = (2, 3), SMALL / 2, warmopt.Measured(rewarm=False)
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(shape, generator=gen) * init) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, ref = warmopt.Adam(ps, lr=1e-3, warmup=warmup), warmopt.Adam(twins, lr=1e-3, warmup=warmup)
    for t in range(4):
        for a, b in zip(ps, twins):
            a.grad = torch.randn(shape, generator=gen)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
        if t == 1:
            if how == "in_place":
                opt.state[ps[1]][key].fill_(1.0)
            else:
                opt.state[ps[1]][key] = torch.tensor(1.0)
            assert float(opt.warmup_scale[0][1]) < 0.5  # not yet: the scale is the last step's
    scales, ref_scales = opt.warmup_scale[0], ref.warmup_scale[0]
    assert float(scales[1]) == 1.0 and float(ref_scales[1]) < 0.5
    assert float(scales[0]) == float(ref_scales[0]) and float(scales[2]) == float(ref_scales[2])
    assert float(scales[0]) < 1 and float(scales[2]) < 1  # the others still warm
    for i, p in enumerate(ps):  # entries and the reported scales agree
        assert float(opt.state[p]["warmup_scale"]) == float(scales[i])
