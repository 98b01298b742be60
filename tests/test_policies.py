"""Properties of the statistics core and of every warm-up policy."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import warmopt
from warmopt import _stats
from warmopt.policies import POLICIES, Statistics

from .cases import v1
from .curves import first_reach, make_gradient, scale_curve

FAST = settings(max_examples=40, deadline=None)
betas = st.floats(min_value=0.5, max_value=0.9995)


# ---------------------------------------------------------------- statistics core


@FAST
@given(beta=betas, t=st.integers(min_value=1, max_value=20000))
def test_effective_sample_size_is_between_one_and_its_limits(beta: float, t: int) -> None:
    n = float(_stats.effective_sample_size(torch.tensor([float(t)]), beta)[0])
    n_next = float(_stats.effective_sample_size(torch.tensor([float(t + 1)]), beta)[0])
    limit = float(_stats.asymptotic_sample_size(beta))
    assert 1 - 1e-4 <= n <= min(t, limit) * (1 + 1e-4)
    assert n_next >= n - 1e-4


def test_effective_sample_size_matches_kish_sum() -> None:
    beta, t = 0.99, 37
    w = torch.tensor([(1 - beta) * beta ** (t - i) for i in range(1, t + 1)], dtype=torch.float64)
    w = w / w.sum()
    kish = float(1 / (w * w).sum())
    assert math.isclose(
        float(_stats.effective_sample_size(torch.tensor([t]), beta)[0]), kish, rel_tol=1e-5
    )


@FAST
@given(
    beta=st.floats(min_value=0.5, max_value=0.999),
    t=st.integers(min_value=2, max_value=500),
    c=st.floats(min_value=1e-3, max_value=1e3),
    seed=st.integers(0, 10_000),
)
def test_fresh_ratio_sums_match_a_plain_loop_and_are_scale_free(
    beta: float, t: int, c: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    g = [torch.randn(7, generator=gen), torch.randn(3, 2, generator=gen)]
    v = [
        torch.rand(7, generator=gen) * (torch.rand(7, generator=gen) > 0.2),
        torch.rand(3, 2, generator=gen),
    ]
    step = torch.tensor([float(t), float(t)])
    prev_bc = 1 - beta ** (step - 1)
    w = _stats.newest_weight(step, beta)
    s1, s2 = _stats.fresh_ratio_sums(g, v, prev_bc, w)
    for i in range(2):
        x = g[i].double().flatten() ** 2
        vhat = v[i].double().flatten() / (1 - beta ** (t - 1))
        r = x / torch.maximum(vhat, float(w[i]) * x).clamp_min(1e-30)
        assert float(r.max()) <= 1 / float(w[i]) * (1 + 1e-5)
        assert math.isclose(float(s1[i]), float(r.sum()), rel_tol=1e-4, abs_tol=1e-6)
        assert math.isclose(float(s2[i]), float((r * r).sum()), rel_tol=1e-4, abs_tol=1e-6)
    # g -> c g, v -> c^2 v leaves the ratio unchanged
    s1c, s2c = _stats.fresh_ratio_sums([x * c for x in g], [x * c * c for x in v], prev_bc, w)
    torch.testing.assert_close(s1c, s1, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(s2c, s2, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("decay", [0.0, 0.1], ids=["plain", "coupled-decay"])
@pytest.mark.parametrize("scaled", [False, True], ids=["unscaled", "grad-scale"])
def test_flat_pass_sums_equal_a_float64_loop_for_any_shapes(decay: float, scaled: bool) -> None:
    """One flat pass (every tensor's coordinates in one zero-padded [rows, BLOCK] buffer, one row
    sum, one segment sum over rows) gives each tensor's own sums, whatever its shape: 0-d,
    empty, below, at and above one row, several rows; with coupled decay, a GradScaler scale and
    never-seen coordinates (v = 0) included."""
    gen = torch.Generator().manual_seed(0)
    block = _stats.BLOCK
    shapes = [(), (0, 3), (5,), (block,), (block + 1,), (17, 40), (3, block)]
    g = [torch.randn(s, generator=gen) for s in shapes]
    v = [torch.rand(s, generator=gen) * (torch.rand(s, generator=gen) > 0.3) for s in shapes]
    p = [torch.randn(s, generator=gen) for s in shapes]
    step = torch.tensor([2.0, 5.0, 9.0, 30.0, 3.0, 7.0, 11.0])
    prev_bc = 1 - 0.99 ** (step - 1)
    w = _stats.newest_weight(step, 0.99)
    inv = torch.tensor(0.25) if scaled else None
    s1, s2 = _stats.fresh_ratio_sums(g, v, prev_bc, w, inv, params=p, coupled_decay=decay)
    for i in range(len(shapes)):
        x = g[i].double().flatten() * (0.5 if scaled else 1.0) + decay * p[i].double().flatten()
        x = x * x
        vhat = v[i].double().flatten() / float(prev_bc[i])
        r = x / torch.maximum(vhat, float(w[i]) * x).clamp_min(1e-30)
        assert math.isclose(float(s1[i]), float(r.sum()), rel_tol=1e-5, abs_tol=1e-6), i
        assert math.isclose(float(s2[i]), float((r * r).sum()), rel_tol=1e-5, abs_tol=1e-6), i


# ---------------------------------------------------------------- every policy, pure


def _random_stats(gen: torch.Generator, n: int) -> Statistics:
    count = torch.randint(1, 1000, (n,), generator=gen).float()
    m1 = torch.rand(n, generator=gen) * 5
    m2 = m1 * m1 + torch.rand(n, generator=gen) * 50
    # the relative step: leaders (most) with steps from 1e-4 to 10 times their size
    leader = (torch.rand(n, generator=gen) > 0.2).float()
    param_sq = torch.rand(n, generator=gen) * 100 * leader
    step_sq = param_sq * 10 ** (torch.rand(n, generator=gen) * 10 - 8)
    # each leader's ||lr d|| / ||p||, as measure_update reports it (float64; 0 for the others)
    ratio = torch.sqrt(step_sq.double() / param_sq.double().clamp_min(1e-300))
    return Statistics(
        m1 * count, m2 * count, count, (torch.rand(n, generator=gen) > 0.1).float(),
        leader=leader, update_ratio=torch.where(leader > 0, ratio, 0.0),
    )  # fmt: skip


#: Measured's components besides the default (the cap alone): the previous default, and each
#: factor of it on top of the cap
MEASURED_VARIANTS = {
    "measured_v1": v1(),
    "measured_ramp": warmopt.Measured(rewarm=False),
    "measured_cap_confidence": warmopt.Measured(confidence=True, rewarm=False),
    "measured_cap_drift": warmopt.Measured(drift=True, rewarm=False),
    "measured_rewarm_confidence": warmopt.Measured(confidence=True),
}


@pytest.mark.parametrize("name", sorted(POLICIES) + sorted(MEASURED_VARIANTS))
@pytest.mark.parametrize("bias_corrected", [True, False])
@FAST
@given(beta=betas, seed=st.integers(0, 10_000))
def test_every_policy_scale_lies_in_unit_interval_and_never_falls(
    name: str, bias_corrected: bool, beta: float, seed: int
) -> None:
    """Scales stay in [0, 1] and below Measured's factors (the cap, and the confidence where it
    is on). What may never fall: the scale of every policy but Measured with ``drift`` or
    ``rewarm``; with ``rewarm=False`` its factors too (ramps), and with ``drift`` the scale is
    those ramps times the drift correction <= 1."""
    policy = MEASURED_VARIANTS[name] if name in MEASURED_VARIANTS else POLICIES[name]()
    bounds: list[str] = []
    if isinstance(policy, warmopt.Measured):
        bounds = [k for k, on in (("cap", policy.max_update is not None),
                                  ("confidence", policy.confidence)) if on]  # fmt: skip
    rewarm = isinstance(policy, warmopt.Measured) and policy.rewarm
    falls = isinstance(policy, warmopt.Measured) and (policy.drift or rewarm)
    ramps = [] if rewarm else bounds
    gen = torch.Generator().manual_seed(seed)
    n = 5
    state = {k: torch.full((n,), v) for k, v in policy.initial_state().items()}
    prev = {k: torch.zeros(n) for k in ["scale", *ramps]}
    for t in range(1, 60):
        step = torch.full((n,), float(t))
        scale, state = policy.update(
            state,
            step,
            torch.full((n,), beta),
            _random_stats(gen, n),
            bias_corrected=bias_corrected,
        )
        assert torch.isfinite(scale).all()
        assert ((scale >= 0) & (scale <= 1)).all()
        now = {"scale": scale, **{k: state[k] for k in ramps}}
        for k in bounds:
            assert (scale <= state[k] + 1e-7).all(), (t, k, scale, state[k])
        for k in ramps if falls else now:
            assert (now[k] >= prev[k] - 1e-7).all(), (t, k, now[k], prev[k])
        prev = now


def first_scale(tol: float = 0.1, prior: float = 32.0, beta: float = 0.999) -> float:
    """Measured's step-1 scale: e_1 = sqrt(K0)/2 at n_eff = 1 and the target is
    max(tol, sqrt(2) sqrt(K0/n_inf)/2), so c_1 = max(2 tol/sqrt(K0), sqrt(2/n_inf))."""
    n_inf = (1 + beta) / (1 - beta)
    return min(1.0, max(2 * tol / math.sqrt(prior), math.sqrt(2 / n_inf)))


@pytest.mark.parametrize("tol", [0.05, 0.1, 0.3, 5.0])
@pytest.mark.parametrize("prior", [2.0, 32.0, 0.5])
def test_measured_first_step_is_not_lost(tol: float, prior: float) -> None:
    """No step of lr exactly 0: step 1 gets 2 tol / sqrt(prior_kurtosis) (floored, capped at 1)."""
    p = torch.nn.Parameter(torch.zeros(3))
    policy = v1(tol=tol, prior_kurtosis=prior)
    opt = warmopt.Adam([p], lr=1.0, warmup=policy)
    p.grad = torch.ones(3)
    opt.step()
    assert math.isclose(float(opt.warmup_scale[0][0]), first_scale(tol, prior), rel_tol=1e-6)
    assert float(p.detach().abs().min()) > 0


def test_measured_without_kurtosis_ignores_the_prior() -> None:
    """The kurtosis=False ablation is Gaussian (K = 2) from the start, whatever the prior."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = warmopt.Adam([p], lr=1.0, warmup=v1(kurtosis=False, prior_kurtosis=50))
    p.grad = torch.ones(3)
    opt.step()
    assert math.isclose(float(opt.warmup_scale[0][0]), first_scale(0.1, 2.0), rel_tol=1e-6)


# ---------------------------------------------------------------- measured, through the optimizer
# The previous default's warm-up lengths (a vector at zero, lr 1e-6: its scale depends on the
# statistics of the gradients only).


def _reach(kind: str, beta2: float, level: float = 0.9, steps: int = 3000) -> int:
    r = first_reach(scale_curve(v1(), kind, beta2, steps, n=2048), level)
    assert r is not None, f"{kind} never reached {level} in {steps} steps"
    return r


def test_measured_reaches_one_on_stationary_gaussian_gradients() -> None:
    for beta2 in (0.99, 0.999):
        assert _reach("gaussian", beta2, level=1.0) <= 100


def test_heavy_tails_warm_longer_than_gaussian() -> None:
    gauss, laplace, sparse = (_reach(k, 0.999) for k in ("gaussian", "laplace", "sparse"))
    assert gauss < laplace < sparse


def test_drifting_gradients_warm_longer_than_stationary() -> None:
    assert _reach("drift", 0.999) > 2 * _reach("gaussian", 0.999)


def test_heavy_tails_with_small_beta_still_finish() -> None:
    """With beta2=0.99 and kappa=20 v̂ never gets within 10 %; the floor rule ends warm-up."""
    assert _reach("sparse", 0.99, level=1.0, steps=1000) <= 1.2 * 0.6 * (1 + 0.99) / 0.01


def test_measured_is_faster_than_radam_on_gaussian_but_never_below_the_tolerance_rule() -> None:
    """Stationary Gaussian, beta2=0.999: RAdam reaches 0.9 after ~2737 steps whatever the data;
    the measured policy after n_eff ~ 0.81/(2 tol^2) (~41 steps at tol=0.1)."""
    radam_curve = scale_curve(warmopt.RAdamRectification(), "gaussian", 0.999, 3000, n=16)
    radam = first_reach(radam_curve, 0.9)
    assert radam == 2737
    measured = _reach("gaussian", 0.999)
    assert 30 <= measured <= 80


def test_scales_are_per_tensor_and_independent() -> None:
    """A tensor's scale depends on its own gradients only, not on its neighbours (up to the order
    of the float additions: on the CPU same-shaped small tensors are measured stacked, a row sum
    instead of a foreach norm)."""
    gen = torch.Generator().manual_seed(0)
    a1, a2, b = (torch.nn.Parameter(torch.zeros(512)) for _ in range(3))
    alone = warmopt.Adam([a1], lr=1e-6, warmup=v1())
    together = warmopt.Adam([a2, b], lr=1e-6, warmup=v1())
    for t in range(1, 80):
        g = make_gradient("gaussian", t, 512, gen)
        a1.grad, a2.grad = g.clone(), g.clone()
        b.grad = make_gradient("sparse", t, 512, gen)
        alone.step()
        together.step()
        assert math.isclose(
            float(alone.warmup_scale[0][0]), float(together.warmup_scale[0][0]), rel_tol=1e-5
        )
    assert float(together.warmup_scale[0][0]) == 1.0
    assert float(together.warmup_scale[0][1]) < 0.9


def _matrix(shape: tuple[int, int], rms: float, seed: int) -> torch.nn.Parameter:
    """A weight matrix of entries of RMS ``rms`` (the default policy measures its steps)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(rms * torch.randn(shape, generator=gen))


def test_default_scales_of_matrices_are_per_tensor_and_independent() -> None:
    """Under the default the relative step of a matrix is its own: beside another matrix fed
    other gradients its scale is the one it has alone, while both are still warming."""
    gen = torch.Generator().manual_seed(0)
    a1, a2 = _matrix((16, 32), 0.05, 1), _matrix((16, 32), 0.05, 1)
    b = _matrix((16, 32), 0.05, 2)
    alone = warmopt.Adam([a1], lr=0.01)
    together = warmopt.Adam([a2, b], lr=0.01)
    for t in range(1, 40):
        g = make_gradient("gaussian", t, 512, gen).view(16, 32)
        a1.grad, a2.grad = g.clone(), g.clone()
        b.grad = make_gradient("sparse", t, 512, gen).view(16, 32)
        alone.step()
        together.step()
        assert math.isclose(
            float(alone.warmup_scale[0][0]), float(together.warmup_scale[0][0]), rel_tol=1e-5
        )
    a, other = together.warmup_scale[0].tolist()
    assert a < 1.0 and other < 1.0  # both still warming
    assert a != other


def test_param_group_added_later_warms_on_its_own() -> None:
    gen = torch.Generator().manual_seed(0)
    old, new = torch.nn.Parameter(torch.zeros(256)), torch.nn.Parameter(torch.zeros(256))
    opt = warmopt.Adam([old], lr=1e-6, warmup=v1())
    for t in range(1, 120):
        old.grad = make_gradient("gaussian", t, 256, gen)
        opt.step()
    assert float(opt.warmup_scale[0][0]) == 1.0
    opt.add_param_group({"params": [new]})
    old.grad = make_gradient("gaussian", 0, 256, gen)
    new.grad = make_gradient("gaussian", 0, 256, gen)
    opt.step()
    assert float(opt.warmup_scale[0][0]) == 1.0
    assert math.isclose(float(opt.warmup_scale[1][0]), first_scale(), rel_tol=1e-6)


def test_param_group_added_later_warms_on_its_own_under_the_default() -> None:
    """A matrix at a small lr is warm from its first step and the warm-up ends; a group added
    later at a larger lr starts warming (at max_update over its relative step), the old one stays
    at 1."""
    gen = torch.Generator().manual_seed(0)
    old, new = _matrix((16, 16), 0.05, 1), _matrix((16, 16), 0.05, 2)
    opt = warmopt.Adam([old], lr=1e-5)
    for t in range(1, 4):
        old.grad = make_gradient("gaussian", t, 256, gen).view(16, 16)
        opt.step()
    assert opt.warmup_scale[0].tolist() == [1.0]
    assert opt._warmup_done
    opt.add_param_group({"params": [new], "lr": 0.01})
    old.grad = make_gradient("gaussian", 0, 256, gen).view(16, 16)
    new.grad = make_gradient("gaussian", 0, 256, gen).view(16, 16)
    size = float(new.detach().norm())
    opt.step()
    assert not opt._warmup_done
    assert float(opt.warmup_scale[0][0]) == 1.0
    # Adam's first step is lr * sign(g): relative size lr * 16 / ||p||
    expected = 0.02 * size / (0.01 * 16)
    assert expected < 0.5
    assert math.isclose(float(opt.warmup_scale[1][0]), expected, rel_tol=1e-4)


@pytest.mark.parametrize("granularity", ["group", "global"])
def test_pooled_granularities_share_one_scale(granularity: str) -> None:
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.zeros(64)) for _ in range(4)]
    opt = warmopt.Adam(
        [{"params": ps[:2]}, {"params": ps[2:]}], lr=1e-6, granularity=granularity, warmup=v1()
    )
    for t in range(1, 30):
        for i, p in enumerate(ps):
            p.grad = make_gradient("sparse" if i == 3 else "gaussian", t, 64, gen)
        opt.step()
    g0, g1 = opt.warmup_scale
    assert g0[0] == g0[1] and g1[0] == g1[1]
    if granularity == "global":
        assert g0[0] == g1[0]


@pytest.mark.parametrize("rewarm", [True, False], ids=["default", "ramp"])
@pytest.mark.parametrize("granularity", ["group", "global"])
def test_pooled_granularities_pool_the_relative_step_of_the_leaders(
    granularity: str, rewarm: bool
) -> None:
    """A unit's relative step is the largest of its leaders' (matrices') ||lr d|| / ||p||:
    vectors add nothing; a unit without a leader (a group of vectors) takes the median of the
    others. The units share one scale while they warm; the ramp's never falls."""
    gen = torch.Generator().manual_seed(0)
    w0, w1, w2 = _matrix((8, 16), 0.05, 1), _matrix((16, 16), 0.02, 2), _matrix((4, 4), 0.1, 3)
    b0, b2 = torch.nn.Parameter(torch.zeros(16)), torch.nn.Parameter(torch.zeros(8))
    groups = [
        {"params": [w0, b0], "lr": 0.02},
        {"params": [w1, w2], "lr": 0.01},
        {"params": [b2], "lr": 0.01},
    ]
    opt = warmopt.Adam(groups, granularity=granularity, warmup=warmopt.Measured(rewarm=rewarm))
    # step 1: d = sign(g), |lr d|^2 = lr^2 numel
    lead = [(w0, 0.02), (w1, 0.01), (w2, 0.01)]
    step_sq = [lr * lr * w.numel() for w, lr in lead]
    param_sq = [float(w.detach().square().sum()) for w, _ in lead]

    def cap(idx: list[int]) -> float:
        ratio = max(math.sqrt(step_sq[i] / param_sq[i]) for i in idx)
        return min(1.0, 0.02 / ratio)

    # the largest ratio and the ratio of the sums differ here, so the test tells them apart
    ratio_of_sums = math.sqrt(sum(step_sq) / sum(param_sq))
    assert min(1.0, 0.02 / ratio_of_sums) > 1.2 * cap([0, 1, 2])

    prev = None
    for t in range(1, 20):
        for p in (w0, b0, w1, w2, b2):
            p.grad = make_gradient("gaussian", t, p.numel(), gen).view(p.shape)
        opt.step()
        scales = opt.warmup_scale
        flat = torch.cat(scales)
        if t == 1:
            if granularity == "global":
                expected = [cap([0, 1, 2])] * 5
            else:
                c0, c1 = cap([0]), cap([1, 2])
                expected = [c0, c0, c1, c1, min(c0, c1)]  # the lower median of two
            assert flat.tolist() == pytest.approx(expected, rel=1e-4)
            assert max(expected) < 0.5
        for g in scales:
            assert (g == g[0]).all()
        if granularity == "global":
            assert (flat == flat[0]).all()
        if prev is not None and not rewarm:
            assert (flat >= prev).all()
        prev = flat
    assert float(flat.max()) < 1.0  # still warming


@pytest.mark.parametrize(
    "base,kwargs",
    [
        ("adam", {}),
        ("adam", {"weight_decay": 0.1}),
        ("adamw", {"amsgrad": True}),
        ("rmsprop", {}),
        ("rmsprop", {"momentum": 0.9}),
        ("rmsprop", {"centered": True}),
    ],
)
def test_default_first_step_moves_a_matrix_by_max_update_of_its_size(
    base: str, kwargs: dict[str, object]
) -> None:
    """The step measured is the step taken: on step 1 (the cap binds) each matrix moves by
    exactly max_update of its norm -- RMSprop's 10x first step (no bias correction) included."""
    cls = {"adam": warmopt.Adam, "adamw": warmopt.AdamW, "rmsprop": warmopt.RMSprop}[base]
    w = _matrix((10, 12), 0.05, 1)
    before = w.detach().clone()
    opt = cls([w], lr=0.01, **kwargs)
    w.grad = torch.randn(10, 12, generator=torch.Generator().manual_seed(5))
    opt.step()
    assert float(opt.warmup_scale[0][0]) < 0.5
    moved = float((w.detach() - before).norm()) / float(before.norm())
    assert math.isclose(moved, 0.02, rel_tol=1e-4)


def test_rmsprop_first_step_is_not_ten_times_lr() -> None:
    """torch's RMSprop moves lr/sqrt(1-alpha) = 10 lr on step 1; the measured warm-up removes the
    bias factor exactly, so the step is the measured first scale times lr."""
    p = torch.nn.Parameter(torch.zeros(100))
    q = torch.nn.Parameter(torch.zeros(100))
    ours, theirs = warmopt.RMSprop([p], lr=0.01, warmup=v1()), torch.optim.RMSprop([q], lr=0.01)
    g = torch.randn(100)
    p.grad, q.grad = g.clone(), g.clone()
    ours.step()
    theirs.step()
    assert math.isclose(float(q.detach().abs().mean()), 0.1, rel_tol=1e-3)
    assert math.isclose(float(p.detach().abs().mean()), 0.01 * first_scale(beta=0.99), rel_tol=1e-3)


def test_radam_policy_is_torch_radams_rectification() -> None:
    """Adam with warmup='radam' and torch.optim.RAdam take steps whose ratio to plain Adam's is
    exactly r_t (eps=0 removes the one place their formulas differ); before rho_t > 5 the scale
    is 0."""
    gen = torch.Generator().manual_seed(0)
    kw = dict(lr=1e-3, betas=(0.9, 0.99), eps=0.0)
    x, y = (
        torch.nn.Parameter(torch.zeros(4, dtype=torch.float64)),
        torch.nn.Parameter(torch.zeros(4, dtype=torch.float64)),
    )
    ours = warmopt.Adam([x], **kw, warmup="radam")
    radam, adam = torch.optim.RAdam([y], **kw), None
    z = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    adam = torch.optim.Adam([z], **kw)
    for t in range(1, 40):
        g = torch.randn(4, generator=gen, dtype=torch.float64)
        y0, z0 = y.detach().clone(), z.detach().clone()
        x.grad, y.grad, z.grad = g.clone(), g.clone(), g.clone()
        ours.step()
        radam.step()
        adam.step()
        s = float(ours.warmup_scale[0][0])
        if t <= 5:
            assert s == 0.0
        else:
            ratio = ((y.detach() - y0) / (z.detach() - z0)).mean().item()
            assert math.isclose(s, ratio, rel_tol=1e-6), (t, s, ratio)


def test_untuned_and_linear_closed_forms() -> None:
    for t in (1, 10, 500, 2000, 5000):
        step, beta = torch.tensor([float(t)]), torch.tensor([0.999], dtype=torch.float64)
        lin, _ = warmopt.UntunedLinear().update({}, step, beta, None)
        exp, _ = warmopt.UntunedExponential().update({}, step, beta, None)
        fixed, _ = warmopt.Linear(100).update({}, step, beta, None)
        assert math.isclose(float(lin), min(1.0, t * 0.001 / 2), rel_tol=1e-5)
        assert math.isclose(float(exp), 1 - math.exp(-0.001 * t), rel_tol=1e-4)
        assert math.isclose(float(fixed), min(1.0, t / 100), rel_tol=1e-6)


def test_rewarm_falls_when_the_estimate_goes_stale_and_recovers() -> None:
    gen = torch.Generator().manual_seed(0)
    p, q = torch.nn.Parameter(torch.zeros(1024)), torch.nn.Parameter(torch.zeros(1024))
    rewarm = warmopt.Adam([p], lr=1e-6, betas=(0.9, 0.99), warmup=v1(rewarm=True))
    mono = warmopt.Adam([q], lr=1e-6, betas=(0.9, 0.99), warmup=v1())
    trace = []
    for t in range(1, 400):
        g = make_gradient("gaussian", t, 1024, gen) * (30.0 if t > 200 else 1.0)
        p.grad, q.grad = g.clone(), g.clone()
        rewarm.step()
        mono.step()
        trace.append(float(rewarm.warmup_scale[0][0]))
        assert float(mono.warmup_scale[0][0]) >= (1.0 if t > 100 else 0.0)
    assert trace[199] == 1.0
    assert min(trace[200:210]) < 0.5  # stale: gradients 30x larger than v̂
    # Re-warming: back above 0.9 while v̂ still lags (at beta = 0.99, 200 steps after a 900x jump
    # in g^2, v̂ holds ~87 % of it; the drift correction d_t accounts for the rest).
    assert trace[-1] >= 0.9 and trace[-1] > trace[250]


def test_measure_every_skips_the_statistics_but_not_the_rise() -> None:
    """With measure_every=3 the estimates change only on calls 2, 5, 8, ... while the scale
    still rises every step; fewer ATen ops on the skipped steps; the warm-up still completes."""
    from .opcount import OpCounter

    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(512))
    opt = warmopt.Adam([p], lr=1e-6, warmup=v1(measure_every=3))
    kurt, scales, ops = [], [], []
    for t in range(1, 200):
        p.grad = make_gradient("gaussian", t, 512, gen)
        with OpCounter() as counter:
            opt.step()
        ops.append(counter.total)
        kurt.append(float(opt.state[p]["warmup_kurtosis"]))
        scales.append(float(opt.state[p]["warmup_scale"]))
    changed = [t for t in range(2, 30) if kurt[t - 1] != kurt[t - 2]]
    assert changed == [t for t in range(2, 30) if (t - 1) % 3 == 1]
    assert all(b > a for a, b in itertools.pairwise(scales[:21]))
    assert ops[2] < ops[1] and ops[3] < ops[4]  # steps 3 and 4 skip, step 2 and 5 measure
    assert scales[-1] == 1.0


def test_measure_every_staggers_the_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """measure_every=k measures tensor j (param_groups order) on calls j+1, j+1+k, ...: each call
    passes about 1/k of the tensors to the statistics, with the same ATen ops on every call, so
    the warming steps cost the same instead of one expensive step in k."""
    from .opcount import OpCounter

    measured: list[int] = []
    inner = warmopt._stats.segment_sums

    def spy(row_sums: dict[str, torch.Tensor], rows: torch.Tensor, n: int) -> object:
        measured.append(n)  # the tensors of one flat pass
        return inner(row_sums, rows, n)

    monkeypatch.setattr(warmopt._stats, "segment_sums", spy)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(64)) for _ in range(6)]
    opt = warmopt.Adam(params, lr=1e-6, foreach=True, warmup=v1(measure_every=3))
    changed, ops, sizes = [], [], []
    before = [32.0] * len(params)
    for t in range(1, 12):
        for p in params:
            p.grad = make_gradient("gaussian", t, 64, gen)
        measured.clear()
        with OpCounter() as counter:
            opt.step()
        ops.append(counter.total)
        sizes.append(sum(measured))
        now = [float(opt.state[p]["warmup_kurtosis"]) for p in params]
        changed.append([j for j, (a, b) in enumerate(zip(before, now)) if a != b])
        before = now
    # call c (0-based; step c + 1) measures the tensors j with (c - 1 - j) % 3 == 0
    assert changed[0] == []
    for c in range(1, 11):
        assert changed[c] == [j for j in range(6) if (c - 1 - j) % 3 == 0], (c, changed[c])
    assert sizes[1:] == [2] * 10  # two of six tensors per call
    assert len(set(ops[1:])) == 1, ops  # the same ops on every call


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_measure_every_rejects_bad_values(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="measure_every"):
        warmopt.Measured(measure_every=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "n,size,every,starts",
    [
        # steps 1..6; three windows of 4 in 10, the last flush with the end, then around again
        (10, 4, 1, [4, 6, 0, 4, 6, 0]),
        (8, 4, 1, [4, 0, 4, 0, 4, 0]),
        (10, 4, 2, [0, 4, 4, 6, 6, 0]),  # measured every 2nd step: consecutive windows
        (12, 3, 1, [3, 6, 9, 0, 3, 6]),
    ],
)
def test_sample_windows_tile_the_tensor(n: int, size: int, every: int, starts: list[int]) -> None:
    step = torch.arange(1.0, 7.0, dtype=torch.float64)
    got = _stats.window_starts(step, torch.full((6,), float(n)), size, every)
    assert got.tolist() == starts
    t = torch.arange(float(n))
    for s in got:
        w = _stats.take_window(t, torch.arange(size) + s)
        assert w.tolist() == list(range(int(s), int(s) + size))


def test_sample_measures_a_window_not_the_tensor() -> None:
    """A spike outside the measured window is invisible at that step, inside it is seen."""
    twins = [torch.nn.Parameter(torch.zeros(100)) for _ in range(2)]
    opts = [warmopt.Adam([p], lr=1e-6, warmup=v1(sample=40)) for p in twins]
    seen = []
    for call in range(4):  # steps 2, 3, 4 measure windows 2, 0, 1: [60, 100), [0, 40), [40, 80)
        for spiked, (p, opt) in enumerate(zip(twins, opts)):
            p.grad = torch.ones(100)
            if spiked and call > 0:
                p.grad[10] = 30.0  # coordinate 10 lies in window 0 only
            opt.step()
        k = [float(opt.state[p]["warmup_kurtosis"]) for p, opt in zip(twins, opts)]
        seen.append(k[0] != k[1])
    assert seen == [False, False, True, True]  # seen at step 3, remembered after


@pytest.mark.parametrize("bad", [0, 1, 2.0, True, "all"])
def test_sample_rejects_bad_values(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="sample"):
        warmopt.Measured(sample=bad)  # type: ignore[arg-type]
