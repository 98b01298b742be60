"""A plain PyTorch loop: bfloat16 autocast, GradScaler, a cosine LR schedule and warmopt.AdamW.

Trains a small MLP on scikit-learn's bundled digits (no download) on the CPU. The LR schedule
has no warm-up phase of its own: warmopt warms up inside ``step()`` and never writes
``param_groups[i]['lr']``, so the scheduler keeps owning it (don't warm twice). If the
``tensorboard`` package is installed, the warm-up is logged with :func:`warmopt.log_warmup`:

    python examples/plain_amp.py && tensorboard --logdir runs
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import warmopt


def summary_writer(log_dir: str | None) -> Any:
    """A ``SummaryWriter`` for ``log_dir``, or ``None`` (no directory, or no tensorboard)."""
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        print("tensorboard is not installed: not logging", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=log_dir)


def main(steps: int = 300, log_dir: str | None = "runs/plain_amp", seed: int = 0) -> dict[str, Any]:
    """Train for ``steps`` steps; return the losses, the model, optimizer and scheduler."""
    torch.manual_seed(seed)
    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np / 16.0, dtype=torch.float32)
    y = torch.tensor(y_np, dtype=torch.long)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    opt = warmopt.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=3e-4)
    # bfloat16 rarely needs loss scaling; the scaler is here because float16 code has one, and
    # warmopt works the same with it (a step the scaler skips changes no warm-up statistic).
    scaler = torch.amp.GradScaler("cpu")
    writer = summary_writer(log_dir)

    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for step in range(1, steps + 1):
        idx = torch.randint(len(x), (64,), generator=gen)
        with torch.amp.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # clip the real gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(loss.item())
        if writer is not None and (step == 1 or step % 10 == 0):
            writer.add_scalar("train/loss", losses[-1], step)
            writer.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
            warmopt.log_warmup(writer, opt, step, histogram=True)
    if writer is not None:
        writer.close()

    summary = warmopt.warmup_summary(opt)
    print(
        f"{steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
        f"warm-up scale median {float(summary['scale_median']):.3f}, "
        f"{float(summary['fraction_warmed']):.0%} of the tensors warmed, "
        f"lr {opt.param_groups[0]['lr']:.2e} (the scheduler's)"
    )
    return {"losses": losses, "model": model, "optimizer": opt, "scheduler": sched}


if __name__ == "__main__":
    main()
