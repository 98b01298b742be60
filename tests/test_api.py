"""The public contract: signatures, the wrapper form, observability, bad input."""

from __future__ import annotations

import inspect
import math
import pydoc
import re

import pytest
import torch

import warmopt

WARMUP_KWARGS = ["warmup", "granularity"]


def _sig(cls: type) -> list[tuple[str, object, object]]:
    return [
        (p.name, p.kind, p.default) for p in inspect.signature(cls.__init__).parameters.values()
    ]


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (warmopt.WarmupOptimizer, torch.optim.Adam),
        (warmopt.Adam, torch.optim.Adam),
        (warmopt.AdamW, torch.optim.AdamW),
        (warmopt.RMSprop, torch.optim.RMSprop),
    ],
    ids=lambda c: c.__name__,
)
def test_signature_is_torchs_plus_keyword_only_warmup_options(ours: type, theirs: type) -> None:
    mine, torchs = _sig(ours), _sig(theirs)
    assert mine[: len(torchs)] == torchs
    extra = mine[len(torchs) :]
    assert [name for name, _, _ in extra] == WARMUP_KWARGS
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in extra)


def test_rmsprop_flags_are_positional_as_in_torch() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = warmopt.RMSprop([p], 1e-2, 0.9, 1e-6, 0.0, 0.5, True)
    g = opt.param_groups[0]
    assert (g["alpha"], g["eps"], g["momentum"], g["centered"]) == (0.9, 1e-6, 0.5, True)


def test_is_a_real_optimizer_with_torchs_defaults_and_groups() -> None:
    model = torch.nn.Linear(3, 2)
    opt = warmopt.AdamW(model.parameters())
    ref = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.defaults == ref.defaults
    assert opt.param_groups[0].keys() == ref.param_groups[0].keys()
    assert opt.param_groups[0]["weight_decay"] == 1e-2
    assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop])
def test_wrapper_shares_the_instances_groups_and_state(cls: type) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    inner = cls([p], lr=0.1)
    opt = warmopt.WarmupOptimizer(inner)
    assert opt.param_groups is inner.param_groups and opt.state is inner.state
    p.grad = torch.ones(3)
    opt.step()
    assert float(opt.warmup_scale[0][0]) > 0
    assert "step" in inner.state[p]


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.RAdam, torch.optim.NAdam])
def test_wrapping_another_optimizer_is_a_type_error(cls: type) -> None:
    inner = cls([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(TypeError, match=r"Adam, torch\.optim\.AdamW and torch\.optim\.RMSprop"):
        warmopt.WarmupOptimizer(inner)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (warmopt.Adam, torch.optim.Adam),
        (warmopt.AdamW, torch.optim.AdamW),
        (warmopt.RMSprop, torch.optim.RMSprop),
    ],
    ids=lambda c: c.__name__,
)
def test_the_named_classes_refuse_an_optimizer_and_point_to_the_wrapper(
    ours: type, theirs: type
) -> None:
    inner = theirs([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(TypeError, match=r"params .*not an optimizer.*WarmupOptimizer\(optimizer\)"):
        ours(inner)
    assert inner.state == {} and warmopt.WarmupOptimizer(inner).param_groups is inner.param_groups


def test_wrapper_rejects_hyperparameters_it_would_ignore() -> None:
    inner = torch.optim.Adam([torch.nn.Parameter(torch.ones(1))])
    with pytest.raises(TypeError, match="lr"):
        warmopt.WarmupOptimizer(inner, lr=0.5)


def test_scale_is_a_device_tensor_and_stats_are_floats() -> None:
    model = torch.nn.Linear(3, 2)
    opt = warmopt.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    (scales,) = opt.warmup_scale
    assert isinstance(scales, torch.Tensor) and scales.shape == (2,)
    assert scales.device == model.weight.device
    stats = opt.warmup_stats()
    assert all(isinstance(stats[k], float) for k in ("scale_min", "scale_median", "scale_max"))
    assert math.isclose(stats["group0/lr_effective"], 0.1 * stats["scale_median"], rel_tol=1e-6)
    assert opt.param_groups[0]["lr"] == 0.1  # the warm-up never writes lr


def test_warmup_stats_ignores_parameters_that_never_stepped() -> None:
    """A frozen (never-stepped) parameter has no warm-up state: it must not count as scale 0."""
    live, frozen = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    opt = warmopt.Adam([live, frozen], lr=0.1)
    before = opt.warmup_stats()
    assert math.isnan(before["scale_median"]) and math.isnan(before["group0/lr_effective"])
    live.grad = torch.ones(4)
    opt.step()
    stats = opt.warmup_stats()
    assert stats["scale_min"] == stats["scale_median"] == stats["scale_max"] > 0
    assert math.isclose(stats["group0/lr_effective"], 0.1 * stats["scale_median"], rel_tol=1e-6)


def test_warmup_stats_has_the_keys_of_warmup_summary_as_floats() -> None:
    model = torch.nn.Linear(3, 2)
    opt = warmopt.RMSprop(
        [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5}], warmup="measured"
    )
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    summary, stats = warmopt.warmup_summary(opt), opt.warmup_stats()
    assert list(stats) == list(summary)
    assert {"group0/lr_effective", "group1/lr_effective", "update_ratio"} <= set(stats)
    assert all(type(v) is float for v in stats.values())
    # the same numbers, NaN where the summary is NaN (group 1 has no matrix to measure)
    assert all(
        v == float(summary[k]) or (math.isnan(v) and math.isnan(float(summary[k])))
        for k, v in stats.items()
    )
    assert math.isnan(stats["group1/update_ratio"]) and stats["group0/update_ratio"] > 0


def test_warmup_state_lives_in_the_per_parameter_state_dict() -> None:
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    opt = warmopt.Adam([p])
    p.grad = torch.ones(3, dtype=torch.bfloat16)
    opt.step()
    sd = opt.state_dict()
    assert {"step", "exp_avg", "exp_avg_sq", "warmup_scale", "warmup_kurtosis"} <= set(
        sd["state"][0]
    )
    q = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    twin = warmopt.Adam([q])
    twin.load_state_dict(sd)
    # torch casts per-parameter state to the parameter's dtype; the warm-up numbers stay float32
    assert twin.state[q]["warmup_scale"].dtype == torch.float32
    assert twin.state[q]["exp_avg"].dtype == torch.bfloat16


def test_warmup_none_reports_scale_one() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = warmopt.Adam([p], warmup=None)
    assert torch.equal(opt.warmup_scale[0], torch.ones(1))


TORCH_CLASSES = [
    (warmopt.WarmupOptimizer, torch.optim.Adam),
    (warmopt.Adam, torch.optim.Adam),
    (warmopt.AdamW, torch.optim.AdamW),
    (warmopt.RMSprop, torch.optim.RMSprop),
]


@pytest.mark.parametrize("ours,theirs", TORCH_CLASSES, ids=lambda c: c.__name__)
def test_help_lists_torchs_arguments_and_the_warmup_options(ours: type, theirs: type) -> None:
    text = pydoc.render_doc(ours, renderer=pydoc.plaintext)  # what help() prints
    args = text[text.index("Args:") : text.index("Example:")]
    for name in inspect.signature(theirs.__init__).parameters:
        if name != "self":
            assert re.search(rf"\b{name}\b", args), name
    for name in WARMUP_KWARGS:
        assert re.search(rf"^[ |]*{name} \(", args, re.M), name
    assert "warmup: 'WarmupPolicy | str | None' = 'measured'" in text  # and the signature


@pytest.mark.parametrize("ours,theirs", TORCH_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("warmup", [None, "radam"], ids=str)
def test_repr_is_torchs_plus_the_policy_and_granularity(
    ours: type, theirs: type, warmup: str | None
) -> None:
    p = torch.nn.Parameter(torch.ones(2))
    opt = ours([{"params": [p]}], warmup=warmup, granularity="group")
    torch_repr = repr(theirs([torch.nn.Parameter(torch.ones(2))]))
    head, tail = repr(opt).rsplit("warmup: ", 1)
    assert head == torch_repr[:-1].replace(theirs.__name__, ours.__name__, 1)
    policy = "None" if warmup is None else "RAdamRectification()"
    assert tail == f"{policy}\ngranularity: group\n)"


# ---------------------------------------------------------------- bad input

P = [torch.nn.Parameter(torch.ones(2))]

BAD = [
    (lambda: warmopt.Adam(P, lr=-1.0), ValueError, "learning rate"),
    (lambda: warmopt.Adam(P, eps=-1e-8), ValueError, "epsilon"),
    (lambda: warmopt.Adam(P, weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda: warmopt.Adam(P, betas=(1.0, 0.999)), ValueError, "beta parameter at index 0"),
    (lambda: warmopt.Adam(P, betas=(0.9, -0.1)), ValueError, "beta parameter at index 1"),
    (lambda: warmopt.AdamW(P, betas=(0.9, 1.5)), ValueError, "beta parameter at index 1"),
    (lambda: warmopt.RMSprop(P, lr=-1.0), ValueError, "learning rate"),
    (lambda: warmopt.RMSprop(P, alpha=1.0), ValueError, "alpha"),
    (lambda: warmopt.Adam(P, warmup="cosine"), ValueError, "warmup policy name"),
    (lambda: warmopt.Adam(P, warmup=3), TypeError, "warmup"),
    (lambda: warmopt.Adam(P, granularity="layer"), ValueError, "granularity"),
    (lambda: warmopt.Measured(tol=0.0), ValueError, "tol"),
    (lambda: warmopt.Measured(tol=-0.1), ValueError, "tol"),
    (lambda: warmopt.Measured(tol=float("nan")), ValueError, "tol"),
    (lambda: warmopt.Linear(0), ValueError, "warmup_steps"),
    (lambda: warmopt.Adam(torch.ones(2)), TypeError, "params"),
    (lambda: warmopt.WarmupOptimizer(torch.ones(2)), TypeError, "params"),
    (lambda: warmopt.RMSprop(torch.ones(2)), TypeError, "params"),
]


@pytest.mark.parametrize("make,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_raises_a_clear_error(make, exc, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match=match):
        make()


def test_sparse_gradients_are_refused_before_anything_changes() -> None:
    dense, emb = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4, 2))
    opt = warmopt.Adam([dense, emb], lr=0.1)
    dense.grad = torch.ones(3)
    emb.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (4, 2))
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert len(opt.state) == 0 and torch.equal(dense.detach(), torch.ones(3))


NO_NUMPY = """
import sys
sys.modules["numpy"] = None  # import numpy raises ImportError: torch runs without it
import torch, warmopt
try:
    torch.zeros(1).numpy()
    raise SystemExit("NumPy is still reachable")
except RuntimeError:  # "Numpy is not available"
    pass
w = torch.nn.Parameter(torch.zeros(3))
for cls in (warmopt.Adam, warmopt.AdamW, warmopt.RMSprop):
    opt = cls([w], lr=1e-3, warmup=warmopt.Linear(2))
    for _ in range(4):
        w.grad = torch.randn(3)
        opt.step()
    assert opt._warmup_done, cls
    warmopt.warmup_summary(opt)
    opt.warmup_stats()
print("ok")
"""


def test_warmopt_needs_torch_only_not_numpy() -> None:
    """torch works without NumPy; so must warmopt (the end of warm-up is read on the host)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", NO_NUMPY], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
