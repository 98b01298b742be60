"""The default policy knows the learning rate: it caps each tensor's relative step, measured.

Properties of ``Measured(max_update=U)``: the scale is ``min(1, U / û)`` (or its running maximum,
the ramp, with ``rewarm=False``), with
``û = ‖lr · d‖ / ‖p‖`` the relative size of the step torch is about to take; vectors and tensors
without a norm of their own follow the matrices; a stationary stream never lowers the ramp's
scale, and the default caps every measured step; once every scale is 1 it measures at doubling
intervals.
"""

from __future__ import annotations

import math

import pytest
import torch

import warmopt
from warmopt._device import HostCopy


def _scales(opt: torch.optim.Optimizer) -> list[float]:
    return torch.cat(opt.warmup_scale).tolist()  # type: ignore[attr-defined]


def _matrix(seed: int = 0, shape: tuple[int, int] = (32, 64)) -> torch.nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=g) * 0.05)


def test_first_scale_is_max_update_over_the_relative_step() -> None:
    # Adam's first step is lr * sign(g) (|g| >> eps): relative size lr * sqrt(N) / ||p||.
    w = _matrix()
    opt = warmopt.Adam([w], lr=0.1)
    w.grad = torch.randn_like(w)
    expected = 0.02 * float(w.detach().norm()) / (0.1 * math.sqrt(w.numel()))
    opt.step()
    assert _scales(opt)[0] == pytest.approx(expected, rel=1e-4)


def test_small_lr_takes_full_steps_from_the_first_step() -> None:
    w = _matrix()
    twin = torch.nn.Parameter(w.detach().clone())
    opt = warmopt.Adam([w], lr=1e-4)
    ref = torch.optim.Adam([twin], lr=1e-4)
    for _ in range(3):
        w.grad = torch.randn_like(w)
        twin.grad = w.grad.clone()
        opt.step()
        ref.step()
    assert _scales(opt) == [1.0]
    torch.testing.assert_close(w, twin)


@pytest.mark.parametrize("lr", [3e-3, 1e-2, 3e-2])
def test_larger_lr_warms_longer(lr: float) -> None:
    """Same weights and gradients at lr and 10 lr: the larger lr has the lower scale."""
    out = []
    for rate in (lr, 10 * lr):
        torch.manual_seed(0)
        w = _matrix()
        opt = warmopt.Adam([w], lr=rate)
        for _ in range(5):
            w.grad = torch.randn_like(w) + 0.5
            opt.step()
        out.append(_scales(opt)[0])
    assert out[1] < out[0]


def _stream(kind: str, gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    if kind == "student_t3":
        z = torch.randn(shape, generator=gen)
        chi2 = torch.randn((3, *shape), generator=gen).square().sum(0)
        return z / torch.sqrt(chi2 / 3) / math.sqrt(3.0)  # unit variance
    if kind == "spikes":
        g = torch.randn(shape, generator=gen)
        spike = torch.rand(shape, generator=gen) < 0.002
        return torch.where(spike, 30 * g, g)
    if kind == "sparse":
        keep = torch.rand(shape, generator=gen) < 0.05
        return torch.where(keep, torch.randn(shape, generator=gen), torch.zeros(shape))
    raise ValueError(kind)


POLICIES = {
    "ramp": warmopt.Measured(rewarm=False),
    "first_default": warmopt.Measured(max_update=None, confidence=True, drift=True, rewarm=False),
    "cap_and_drift": warmopt.Measured(drift=True, rewarm=False),
}


@pytest.mark.parametrize("kind", ["student_t3", "spikes", "sparse"])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_the_ramp_never_falls_on_a_stationary_stream(kind: str, policy: str) -> None:
    """With ``rewarm=False`` the scale is non-decreasing, for heavy tails (Student-t with 3
    degrees of freedom), rare x30 spikes and sparse gradients."""
    gen = torch.Generator().manual_seed(1)
    w = _matrix(shape=(64, 64))
    v = torch.nn.Parameter(torch.zeros(64))
    opt = warmopt.Adam([w, v], lr=0.05, betas=(0.9, 0.99), warmup=POLICIES[policy])
    prev = [0.0, 0.0]
    for _ in range(300):
        w.grad = _stream(kind, gen, tuple(w.shape))
        v.grad = _stream(kind, gen, tuple(v.shape))
        opt.step()
        now = _scales(opt)
        assert all(b >= a - 1e-7 for a, b in zip(prev, now)), (prev, now)
        prev = now


@pytest.mark.parametrize("kind", ["student_t3", "spikes", "sparse"])
def test_the_default_caps_every_measured_step_on_a_stationary_stream(kind: str) -> None:
    """The default (``rewarm=True``): on every measured step the step taken, scale times the
    measured full step, is at most ``max_update`` of the matrix, and where the full step is
    below it the scale is 1 -- for heavy tails, rare x30 spikes and sparse gradients."""
    gen = torch.Generator().manual_seed(1)
    w = _matrix(shape=(64, 64))
    opt = warmopt.Adam([w], lr=0.05, betas=(0.9, 0.99))
    below = 0
    for _ in range(300):
        w.grad = _stream(kind, gen, tuple(w.shape))
        before = opt.state[w].get("warmup_update_ratio")
        before = None if before is None else float(before)
        opt.step()
        ratio, scale = float(opt.state[w]["warmup_update_ratio"]), _scales(opt)[0]
        if ratio == before:  # not measured (watching): the step was torch's own at scale 1
            assert scale == 1.0
            continue
        assert scale * ratio <= 0.02 * (1 + 1e-5), (scale, ratio)
        assert scale == 1.0 or scale * ratio == pytest.approx(0.02, rel=1e-5)
        below += scale < 1.0
    assert below > 0  # the cap did bind on this stream


def test_vectors_and_zero_tensors_follow_the_median_matrix() -> None:
    mats = [_matrix(seed=s, shape=(16, 16 * (s + 1))) for s in range(3)]
    bias = torch.nn.Parameter(torch.zeros(16))
    zero = torch.nn.Parameter(torch.zeros(16, 16))  # a zero-initialised matrix (LoRA's B)
    opt = warmopt.Adam([*mats, bias, zero], lr=0.1)
    for p in (*mats, bias, zero):
        p.grad = torch.randn_like(p)
    opt.step()
    s = _scales(opt)
    assert s[3] == s[4] == sorted(s[:3])[1]


def test_only_vectors_warm_at_full_scale() -> None:
    b = torch.nn.Parameter(torch.zeros(8))
    opt = warmopt.Adam([b], lr=0.3)
    b.grad = torch.randn_like(b)
    opt.step()
    assert _scales(opt) == [1.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_update": 0.0}, "max_update"),
        ({"max_update": -1.0}, "max_update"),
        ({"max_update": math.inf}, "max_update"),
        ({"max_update": None}, "max_update"),
    ],
)
def test_bad_settings_name_the_argument(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        warmopt.Measured(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("rewarm", [False, True])
def test_a_nan_gradient_measures_nothing(rewarm: bool) -> None:
    """A NaN in a matrix's gradient makes its relative step NaN: the tensor keeps its cap and
    its last relative step (no NaN scale poisons the whole tensor, where torch poisons one
    coordinate), the median the vectors follow leaves it out, the other matrices go on."""
    a, b = _matrix(seed=1), _matrix(seed=2)
    bias = torch.nn.Parameter(torch.zeros(32))
    opt = warmopt.Adam([a, b, bias], lr=0.1, warmup=warmopt.Measured(rewarm=rewarm))
    gen = torch.Generator().manual_seed(0)
    for p in (a, b, bias):
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    before = {k: opt.state[a][k].clone() for k in ("warmup_cap", "warmup_update_ratio")}
    for p in (a, b, bias):
        p.grad = torch.randn(p.shape, generator=gen)
    a.grad[3, 4] = float("nan")  # type: ignore[index]
    opt.step()
    for key, value in before.items():
        assert torch.equal(opt.state[a][key], value), key
    s = _scales(opt)
    assert all(math.isfinite(x) for x in s)
    assert s[0] == float(before["warmup_cap"])
    assert s[2] == s[1]  # the bias follows the only matrix measured
    assert int(torch.isnan(a.detach()).sum()) == 1  # torch's own poisoning, one coordinate


def _measured_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record which ``step()`` calls measure the relative step (a spy on the measure stage)."""
    import warmopt.optimizer as stages

    calls: list[int] = []
    real = stages.measure_update

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(stages, "measure_update", spy)
    return calls


def test_a_rewarming_policy_watches_at_doubling_intervals_once_every_scale_is_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scale 1 from the first step: measured steps 1, 3, 7, 15, 31, then every 16th; the steps
    between are torch's own, bit for bit."""
    calls = _measured_steps(monkeypatch)
    w = _matrix()
    twin = torch.nn.Parameter(w.detach().clone())
    opt = warmopt.Adam([w], lr=1e-4, warmup=warmopt.Measured(rewarm=True, watch_every=16))
    ref = torch.optim.Adam([twin], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    measured = []
    for k in range(1, 80):
        w.grad = torch.randn(w.shape, generator=gen)
        twin.grad = w.grad.clone()
        before = len(calls)
        opt.step()
        ref.step()
        if len(calls) > before:
            measured.append(k)
        assert torch.equal(w, twin), k
    assert measured == [1, 3, 7, 15, 31, 47, 63, 79]
    assert _scales(opt) == [1.0]


def test_a_watched_step_that_grows_brings_back_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the scale reached 1, a learning rate raised far enough makes the next measured step
    find the step too large: the scale falls below 1 and every step is measured again."""
    calls = _measured_steps(monkeypatch)
    w = _matrix()
    opt = warmopt.Adam([w], lr=1e-4, warmup=warmopt.Measured(rewarm=True, watch_every=8))
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        w.grad = torch.randn(w.shape, generator=gen)
        opt.step()
    assert _scales(opt) == [1.0]
    opt.param_groups[0]["lr"] = 1.0
    trace, measured = [], []
    for _ in range(12):
        w.grad = torch.randn(w.shape, generator=gen)
        before = len(calls)
        opt.step()
        measured.append(len(calls) > before)
        trace.append(_scales(opt)[0])
    first = measured.index(True)
    assert first < 8  # the next measured step comes within watch_every steps
    assert trace[first] < 1.0
    assert all(measured[first:]), measured  # and from then on every step is measured
    assert all(s < 1.0 for s in trace[first:])


def test_watch_every_1_measures_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _measured_steps(monkeypatch)
    w = _matrix()
    opt = warmopt.Adam([w], lr=1e-4, warmup=warmopt.Measured(rewarm=True, watch_every=1))
    for _ in range(20):
        w.grad = torch.randn_like(w)
        opt.step()
    assert len(calls) == 20


def test_the_ramp_stops_measuring_once_every_scale_is_1(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _measured_steps(monkeypatch)
    w = _matrix()
    opt = warmopt.Adam([w], lr=1e-4, warmup=warmopt.Measured(rewarm=False))
    for _ in range(20):
        w.grad = torch.randn_like(w)
        opt.step()
    assert len(calls) == 1 and opt._warmup_done


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-3, ValueError), (True, TypeError), (2.0, TypeError)]
)
def test_bad_watch_every_names_the_argument(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="watch_every"):
        warmopt.Measured(watch_every=value)  # type: ignore[arg-type]


class _LateCopy(HostCopy):
    """A host copy whose value arrives only on the ``lag``-th poll after it was sent, as on an
    accelerator whose host runs ahead of the device."""

    def __init__(self, lag: int) -> None:
        super().__init__()
        self.lag, self.polls = lag, 0

    def publish(self, value: torch.Tensor, keep: bool = False) -> None:
        if keep and self.pending:
            return
        super().publish(value, keep)
        self.polls = 0

    def poll(self, wait: bool = False) -> object:
        self.polls += 1
        return super().poll() if (wait or self.polls >= self.lag) else None


@pytest.mark.parametrize("lag", [2, 5])
def test_watching_with_late_answers_still_spaces_its_measured_steps(
    monkeypatch: pytest.MonkeyPatch, lag: int
) -> None:
    """Each measured step's answer reaches the host ``lag`` calls late: the spacing still grows
    to ``watch_every`` (answers are not overwritten while unread, and the host does not measure
    every step while it waits), and a step grown too large is still found and capped."""
    calls = _measured_steps(monkeypatch)
    w = _matrix()
    opt = warmopt.Adam([w], lr=1e-4, warmup=warmopt.Measured(watch_every=16))
    opt._book.done_flag = _LateCopy(lag)  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        w.grad = torch.randn(w.shape, generator=gen)
        opt.step()
    before = len(calls)
    for _ in range(64):
        w.grad = torch.randn(w.shape, generator=gen)
        opt.step()
    assert len(calls) - before == 4  # one in 16
    opt.param_groups[0]["lr"] = 1.0
    trace = []
    for _ in range(40):
        w.grad = torch.randn(w.shape, generator=gen)
        opt.step()
        trace.append(_scales(opt)[0])
    assert min(trace[:17]) < 1.0 and all(s < 1.0 for s in trace[-8:])
