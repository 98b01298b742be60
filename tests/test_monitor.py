"""warmopt.monitor: summaries equal a slow reference, never sync, and reach a real SummaryWriter."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
import torch

import warmopt
from warmopt.monitor import log_warmup, warmup_summary

from .cases import v1
from .opcount import OpCounter

#: the policies summarised: the default (its relative step), the previous default (kurtosis and
#: drift) and the cap with the drift factor (all three)
POLICIES = {
    "measured": "measured",
    "v1": v1(),
    "cap_drift": warmopt.Measured(drift=True),
    "radam": "radam",
    "none": None,
}


def _model_and_groups(lr1: float | torch.Tensor = 3e-2) -> tuple[list[torch.nn.Parameter], list]:  # type: ignore[type-arg]
    """Matrices and vectors with entries of RMS 0.01: the default's cap binds at these learning
    rates (the first relative step of a matrix is lr / 0.01), so the summaries see it warm."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 4), (6,), (3, 6), (3,), (5, 5), (2,)]
    ps = [torch.nn.Parameter(0.01 * torch.randn(s, generator=gen)) for s in shapes]
    groups = [
        {"params": ps[:2]},
        {"params": ps[2:4], "lr": lr1},
        {"params": ps[4:]},  # ps[5] never gets a gradient below
    ]
    return ps, groups


def _train(opt: torch.optim.Optimizer, ps: list[torch.nn.Parameter], steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for t in range(steps):
        for i, p in enumerate(ps):
            if i == 5:
                continue
            # growing, heavy-tailed gradients on some tensors, so the scales differ
            scale = 1.0 + (0.05 * t if i % 2 else 0.0)
            p.grad = torch.randn(p.shape, generator=gen).pow(3 if i == 2 else 1) * scale
        opt.step()


def _reference(opt: torch.optim.Optimizer) -> dict[str, float]:
    """The summary computed slowly from ``optimizer.state``, one Python float at a time."""
    policy = getattr(opt, "warmup", None)
    names = {"scale": "warmup_scale"}
    if isinstance(policy, warmopt.Measured):
        if policy.max_update is not None:
            names.update(update_ratio="warmup_update_ratio")
        if policy.confidence or policy.drift:
            names.update(kurtosis="warmup_kurtosis", drift="warmup_drift")
    per_group: list[dict[str, list[float]]] = []
    for group in opt.param_groups:
        cols: dict[str, list[float]] = {name: [] for name in names}
        for p in group["params"]:
            st = opt.state.get(p, {})
            if policy is None:
                cols["scale"].append(1.0)
            elif "warmup_scale" in st:
                for name, key in names.items():
                    cols[name].append(float(st[key]))
        per_group.append(cols)

    def stats(cols: dict[str, list[float]], lr: Any = None) -> dict[str, float]:
        sc = cols["scale"]
        if not sc:
            keys = ["scale_min", "scale_median", "scale_max", "fraction_warmed"]
            out = dict.fromkeys(keys + [n for n in cols if n != "scale"], math.nan)
        else:
            out = {
                "scale_min": min(sc),
                "scale_median": statistics.median_low(sc),
                "scale_max": max(sc),
                "fraction_warmed": sum(s >= 1.0 for s in sc) / len(sc),
            }
            out.update({n: statistics.median_low(v) for n, v in cols.items() if n != "scale"})
            if "update_ratio" in cols:  # over the tensors whose relative step is measured
                led = [x for x in cols["update_ratio"] if x > 0]
                out["update_ratio"] = statistics.median_low(led) if led else math.nan
        if lr is not None:
            out["lr_effective"] = float(lr) * out["scale_median"]
        return out

    ref = stats({n: [x for c in per_group for x in c[n]] for n in names})
    for i, (cols, group) in enumerate(zip(per_group, opt.param_groups)):
        ref.update({f"group{i}/{k}": v for k, v in stats(cols, group["lr"]).items()})
    return ref


def _assert_matches(summary: dict[str, torch.Tensor], ref: dict[str, float]) -> None:
    assert set(summary) == set(ref)
    for key, value in summary.items():
        assert value.dim() == 0 and value.dtype == torch.float32, key
        expected = ref[key]
        if math.isnan(expected):
            assert math.isnan(float(value)), key
        else:
            assert float(value) == pytest.approx(expected, rel=1e-6, abs=1e-12), key


@pytest.mark.parametrize("warmup", list(POLICIES))
@pytest.mark.parametrize("steps", [0, 1, 7, 60])
def test_summary_equals_slow_reference(warmup: str, steps: int) -> None:
    ps, groups = _model_and_groups()
    opt = warmopt.AdamW(groups, lr=1e-3, warmup=POLICIES[warmup])
    _train(opt, ps, steps)
    summary = warmup_summary(opt)
    _assert_matches(summary, _reference(opt))
    if warmup != "none" and steps in (1, 7):
        assert float(summary["scale_min"]) < 1.0  # summarised while warming


@pytest.mark.parametrize("warmup", ["measured", "cap_drift"])
def test_summary_with_tensor_lr_rmsprop_and_group_granularity(warmup: str) -> None:
    ps, groups = _model_and_groups(lr1=torch.tensor(0.02))
    opt = warmopt.RMSprop(groups, lr=1e-3, granularity="group", warmup=POLICIES[warmup])
    _train(opt, ps, 9)
    summary = warmup_summary(opt)
    _assert_matches(summary, _reference(opt))
    assert float(summary["scale_min"]) < 1.0
    assert float(summary["group1/update_ratio"]) > 0.0
    assert float(summary["group1/lr_effective"]) == pytest.approx(
        0.02 * float(summary["group1/scale_median"]), rel=1e-6
    )


SUMMARY_KEYS = {
    "measured": {"update_ratio"},
    "v1": {"kurtosis", "drift"},
    "cap_drift": {"update_ratio", "kurtosis", "drift"},
}


@pytest.mark.parametrize("warmup", list(SUMMARY_KEYS))
def test_keys_and_values_before_the_first_step_and_for_unwarmed_groups(warmup: str) -> None:
    ps, groups = _model_and_groups()
    opt = warmopt.Adam(groups, lr=1e-3, warmup=POLICIES[warmup])
    before = warmup_summary(opt)
    expected = {"scale_min", "scale_median", "scale_max", "fraction_warmed", *SUMMARY_KEYS[warmup]}
    per_group = expected | {"lr_effective"}
    assert set(before) == expected | {f"group{i}/{k}" for i in range(3) for k in per_group}
    assert all(math.isnan(float(v)) for v in before.values())

    # group 2 only ever steps ps[4] (ps[5] has no gradient); after one step nothing is warmed
    _train(opt, ps, 1)
    after = warmup_summary(opt)
    for i in range(3):
        assert float(after[f"group{i}/fraction_warmed"]) == 0.0
        assert 0.0 < float(after[f"group{i}/scale_median"]) < 1.0
    assert float(after["fraction_warmed"]) == 0.0

    # a group added later has no state: NaN there, the rest unchanged
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 0.5})
    later = warmup_summary(opt)
    assert math.isnan(float(later["group3/scale_median"]))
    assert math.isnan(float(later["group3/lr_effective"]))
    assert float(later["scale_median"]) == float(after["scale_median"])
    _assert_matches(later, _reference(opt))


def test_update_ratio_is_the_median_relative_step_of_the_matrices() -> None:
    """The default's ``update_ratio``: the lower median of the measured relative steps, over the
    tensors that lead (a bias follows, its 0 is no measurement); NaN for a group of vectors.
    On Adam's first step a matrix's relative step is lr * sqrt(numel) / ||W||."""
    gen = torch.Generator().manual_seed(0)
    ws = [torch.nn.Parameter(0.01 * torch.randn(s, generator=gen)) for s in [(4, 8), (8, 8)]]
    bs = [torch.nn.Parameter(torch.zeros(n)) for n in (4, 8, 3)]
    opt = warmopt.Adam(
        [{"params": [ws[0], bs[0], bs[1]]}, {"params": [ws[1]]}, {"params": [bs[2]]}], lr=1e-3
    )
    for p in (*ws, *bs):
        p.grad = torch.randn(p.shape, generator=gen)
    ratio = [1e-3 * math.sqrt(w.numel()) / float(w.detach().norm()) for w in ws]
    opt.step()
    summary = warmup_summary(opt)
    assert float(summary["scale_max"]) < 1.0  # measured while warming
    for i, w in enumerate(ws):
        assert float(opt.state[w]["warmup_update_ratio"]) == pytest.approx(ratio[i], rel=1e-4)
    measured = [float(opt.state[w]["warmup_update_ratio"]) for w in ws]
    assert float(summary["update_ratio"]) == min(measured)  # the lower median of two
    assert float(summary["group0/update_ratio"]) == measured[0]  # not the biases' zeros
    assert float(summary["group1/update_ratio"]) == measured[1]
    assert math.isnan(float(summary["group2/update_ratio"]))
    assert "warmup/group2/update_ratio" not in log_warmup(_ListWriter(), opt, step=1)
    _assert_matches(summary, _reference(opt))


def test_a_plain_torch_optimizer_counts_as_fully_warmed() -> None:
    _, groups = _model_and_groups()
    opt = torch.optim.Adam(groups, lr=1e-3)
    summary = warmup_summary(opt)
    assert float(summary["fraction_warmed"]) == 1.0
    assert float(summary["group1/lr_effective"]) == pytest.approx(3e-2)


@pytest.mark.parametrize("warmup", ["measured", None], ids=str)
def test_no_host_sync_and_a_fixed_number_of_ops(warmup: str | None) -> None:
    totals = []
    for n in (4, 40):
        ps = [torch.nn.Parameter(torch.zeros(3)) for _ in range(n)]
        opt = warmopt.Adam(
            [{"params": ps[: n // 2]}, {"params": ps[n // 2 :], "lr": torch.tensor(0.1)}],
            warmup=warmup,
        )
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn(3)
            opt.step()
        counter = OpCounter()
        with counter:
            warmup_summary(opt)
        assert counter.syncs == 0, counter.ops
        assert counter.ops["aten._local_scalar_dense"] == 0
        totals.append(counter.total)
    assert totals[0] == totals[1], totals  # stacked once: op count independent of tensor count


class _ListWriter:
    """Only ``add_scalar``: what the helper must work with."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.rows.append((tag, value, step))


def test_log_warmup_writes_floats_and_skips_nan() -> None:
    ps, groups = _model_and_groups()
    opt = warmopt.Adam(groups, lr=1e-3)
    writer = _ListWriter()
    assert log_warmup(writer, opt, step=0) == {}  # nothing stepped yet: nothing written
    assert writer.rows == []
    _train(opt, ps, 3)
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    written = log_warmup(writer, opt, step=3, prefix="opt")
    summary = warmup_summary(opt)
    # returned under the tags it wrote: the summary's keys behind the prefix
    assert written == {tag: value for tag, value, _ in writer.rows}
    assert set(written) == {f"opt/{k}" for k in summary if not k.startswith("group3/")}
    for tag, value, step in writer.rows:
        assert type(value) is float and step == 3
        assert value == float(summary[tag.removeprefix("opt/")])
    assert log_warmup(_ListWriter(), opt, step=3, prefix="").keys() == {
        t.removeprefix("opt/") for t in written
    }
    rows = len(writer.rows)
    with pytest.raises(TypeError, match="add_histogram"):
        log_warmup(writer, opt, step=3, histogram=True)
    assert len(writer.rows) == rows  # refused before writing anything


def test_log_warmup_to_a_real_summary_writer(tmp_path: Any) -> None:
    pytest.importorskip(
        "tensorboard",
        reason="the tensorboard package is not installed (pip install -e '.[examples]')",
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    ps, groups = _model_and_groups()
    opt = warmopt.AdamW(groups, lr=1e-3)
    expected: dict[int, dict[str, float]] = {}
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for step in (1, 2, 3):
            _train(opt, ps, 1)
            expected[step] = log_warmup(writer, opt, step, histogram=True)

    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == set(expected[1])
    assert "warmup/group1/lr_effective" in tags["scalars"]
    for tag in expected[1]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        for e in events:
            assert e.value == pytest.approx(expected[e.step][tag], rel=1e-6, abs=1e-12)
    scales = acc.Histograms("warmup/scale")
    assert [h.step for h in scales] == [1, 2, 3]
    assert scales[-1].histogram_value.num == 5  # five tensors have stepped
    assert scales[-1].histogram_value.max == pytest.approx(expected[3]["warmup/scale_max"])
