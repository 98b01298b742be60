"""The examples under examples/ run for a few steps on the CPU and use warmopt as documented:
finite losses, a warm-up scale that advanced, and ``param_groups[0]['lr']`` equal to the
scheduler's value (the scale multiplies it inside the step, it is never written there)."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import warmopt

#: every example ends its cosine schedule at this learning rate (a tenth of its peak, 3e-3)
FINAL_LR = 3e-4


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is much faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check(result: dict[str, Any], steps: int) -> None:
    losses = result["losses"]
    assert len(losses) == steps
    assert all(math.isfinite(x) for x in losses)
    opt = result["optimizer"]
    assert isinstance(opt, warmopt.WarmupOptimizer)
    summary = warmopt.warmup_summary(opt)
    # the default policy measured the steps (the median relative step of the weight matrices
    # is a positive number) and its scale lies in (0, 1]
    assert 0.0 < float(summary["update_ratio"]) < math.inf
    assert 0.0 < float(summary["scale_min"]) <= float(summary["scale_max"]) <= 1.0
    # the group lr is the scheduler's (not lr * scale), also at the end of the schedule
    for group, lr in zip(opt.param_groups, result["scheduler"].get_last_lr()):
        assert group["lr"] == lr
        assert group["lr"] == pytest.approx(FINAL_LR, rel=1e-6)
    assert float(summary["group0/lr_effective"]) <= FINAL_LR * (1 + 1e-6)  # float32


def test_plain_amp_warms_its_first_step() -> None:
    """lr 3e-3 would move nn.Linear's default-initialised weights by more than the default's 2 %
    in one Adam step, so the first step is taken at a reduced scale."""
    pytest.importorskip("sklearn", reason="the examples use scikit-learn's bundled digits")
    from examples import plain_amp

    summary = warmopt.warmup_summary(plain_amp.main(steps=1)["optimizer"])
    assert float(summary["update_ratio"]) > 0.02
    assert float(summary["scale_max"]) < 1.0


def test_plain_amp(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="the examples use scikit-learn's bundled digits")
    from examples import plain_amp

    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    result = plain_amp.main(steps=12, log_dir=str(tmp_path) if has_tensorboard else None)
    _check(result, 12)
    if has_tensorboard:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path))
        acc.Reload()
        assert {"train/loss", "warmup/scale_median", "warmup/group0/lr_effective"} <= set(
            acc.Tags()["scalars"]
        )
        assert [e.step for e in acc.Scalars("warmup/scale_median")] == [1, 10]
        assert "warmup/scale" in acc.Tags()["histograms"]


def test_lightning_example() -> None:
    pytest.importorskip("sklearn", reason="the examples use scikit-learn's bundled digits")
    pytest.importorskip(
        "lightning", reason="PyTorch Lightning is not installed (pip install -e '.[examples]')"
    )
    from examples import lightning_example

    result = lightning_example.main(steps=10)
    _check(result, 10)
    assert result["trainer"].global_step == 10
    metrics = result["trainer"].callback_metrics
    summary = warmopt.warmup_summary(result["optimizer"])
    assert float(metrics["warmup/scale_median"]) == float(summary["scale_median"])


def test_hf_trainer_example() -> None:
    pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install -e '.[examples]')"
    )
    pytest.importorskip(
        "accelerate", reason="transformers.Trainer needs accelerate (pip install -e '.[examples]')"
    )
    from examples import hf_trainer

    result = hf_trainer.main(steps=8)
    _check(result, 8)
    trainer = result["trainer"]
    assert trainer.state.global_step == 8
    assert getattr(trainer.optimizer, "optimizer", trainer.optimizer) is result["optimizer"]
    history = result["callback"].history
    assert len(history) == 8
    medians = [row["scale_median"] for row in history]
    assert medians[0] < 1.0  # the first step is warmed
    assert medians == sorted(medians)  # the default policy's scale never falls
