"""The README's main job: warmopt beside the usual warm-ups on real data, in a few minutes.

Data: scikit-learn's bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``, 1797
images, shipped with the package, no download); a 3-layer ReLU MLP without normalisation layers;
Adam with betas (0.9, 0.999) at a constant learning rate (no decay, so only the warm-up differs).
Every method sees the same initial weights (and batch order) for a given seed.

Tasks (``--task``):

* ``mse`` (default): squared error on one-hot targets, full batch, 250 steps -- a regime known to
  need warm-up: Adam without it stalls at the loss of the constant predictor from lr = 0.03 on.
* ``ce``: cross-entropy, mini-batches of 64, 600 steps (Adam alone degrades but rarely fails).

Methods:

* ``adam``            torch.optim.Adam, no warm-up
* ``warmopt``         warmopt.Adam, default measured warm-up (no warm-up length to set)
* ``radam``           torch.optim.RAdam
* ``untuned_linear``  torch.optim.Adam + pytorch_warmup.UntunedLinearWarmup (2/(1-beta2) steps)
* ``linear_oracle``   torch.optim.Adam + linear warm-up of 5 %, 20 % or 50 % of the steps: the
                      best of the three at each learning rate, picked on the final training loss
                      (hand-tuned)

Usage::

    python -m benchmarks.demo            # ~4 minutes on a 2-core laptop CPU (5 seeds)
    python -m benchmarks.demo --seeds 2  # faster, noisier at the highest learning rates
    python -m benchmarks.demo --task ce  # the mini-batch cross-entropy variant
    python -m benchmarks.demo --tiny     # seconds: the smoke test's setting

Prints a table and writes ``benchmarks/results/demo.{json,md}`` and ``demo_lr.png``,
``demo_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import warmopt
from benchmarks._common import git_commit

RESULTS = Path(__file__).resolve().parent / "results"
#: Linear warm-up lengths tried by the hand-tuned oracle, as fractions of the run.
ORACLE_FRACTIONS = (0.05, 0.2, 0.5)
#: Per task: steps, learning rates, loss name, batch size (0 = full batch).
TASKS: dict[str, tuple[int, list[float], str, int]] = {
    "mse": (250, [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], "mse", 0),
    "ce": (600, [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "ce", 64),
}


def oracle_lengths(steps: int) -> list[int]:
    return [max(2, int(f * steps)) for f in ORACLE_FRACTIONS]


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def load_data(seed: int = 0) -> Data:
    """Digits, scaled to [0, 1], split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return Data(x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]])


def make_model(seed: int, width: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    )


class _Schedule:
    """Wraps an optimizer with an optional per-step LR multiplier applied by a real scheduler."""

    def __init__(self, opt: torch.optim.Optimizer, after_step: Callable[[], None] | None) -> None:
        self.opt, self.after_step = opt, after_step

    def step(self) -> None:
        self.opt.step()
        if self.after_step is not None:
            self.after_step()


def make_method(name: str, params: Any, lr: float) -> _Schedule:
    betas = (0.9, 0.999)
    if name == "adam":
        return _Schedule(torch.optim.Adam(params, lr=lr, betas=betas), None)
    if name == "warmopt":
        return _Schedule(warmopt.Adam(params, lr=lr, betas=betas), None)
    if name == "radam":
        return _Schedule(torch.optim.RAdam(params, lr=lr, betas=betas), None)
    if name == "untuned_linear":
        import pytorch_warmup

        opt = torch.optim.Adam(params, lr=lr, betas=betas)
        warm = pytorch_warmup.UntunedLinearWarmup(opt)

        def dampen() -> None:
            with warm.dampening():
                pass

        return _Schedule(opt, dampen)
    if name.startswith("linear_"):
        length = int(name.split("_")[1])
        opt = torch.optim.Adam(params, lr=lr, betas=betas)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / length))
        return _Schedule(opt, sched.step)
    raise ValueError(name)


def loss_fn(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(out, y)
    return (out - F.one_hot(y, 10).to(out.dtype)).square().sum(1).mean()


def constant_loss(kind: str, y: torch.Tensor) -> float:
    """Loss of the best input-independent prediction (the class frequencies p): the level at which
    a network that learned nothing about the images stalls."""
    p = torch.bincount(y, minlength=10).double() / len(y)
    if kind == "ce":
        return float(-(p[p > 0] * p[p > 0].log()).sum())
    return float(1.0 - (p * p).sum())


#: A run "stalled" when its final loss is within this fraction of the constant predictor's.
STALL_MARGIN = 0.02


def train(
    name: str, lr: float, seed: int, data: Data, steps: int, width: int, kind: str, batch: int
) -> dict[str, Any]:
    model = make_model(seed, width)
    method = make_method(name, model.parameters(), lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        loss0 = float(loss_fn(kind, model(data.x_train), data.y_train))
    curve = []
    for _ in range(steps):
        if batch:
            idx = torch.randint(0, len(data.x_train), (batch,), generator=gen)
            loss = loss_fn(kind, model(data.x_train[idx]), data.y_train[idx])
        else:
            loss = loss_fn(kind, model(data.x_train), data.y_train)
        method.opt.zero_grad(set_to_none=True)
        loss.backward()
        method.step()
        curve.append(loss.item())
        if not math.isfinite(curve[-1]):
            break
    with torch.no_grad():
        final = float(loss_fn(kind, model(data.x_train), data.y_train))
        acc = float((model(data.x_val).argmax(1) == data.y_val).float().mean())
    early = curve[: max(1, steps // 5)]
    failed = (not math.isfinite(final)) or final >= loss0
    stall = (1 - STALL_MARGIN) * constant_loss(kind, data.y_train)
    return {
        "method": name, "lr": lr, "seed": seed, "loss0": loss0,
        "final_loss": final if math.isfinite(final) else float("inf"),
        "val_acc": acc if math.isfinite(final) else 0.0,
        "failed": failed, "stalled": failed or final >= stall,
        "early_loss": sum(early) / len(early), "curve": curve,
    }  # fmt: skip


def summarize(
    runs: list[dict[str, Any]], methods: list[str], lrs: list[float], lengths: list[int]
) -> list[dict]:
    """Mean over seeds per (method, lr); the oracle takes the best linear length per lr."""

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    rows = []
    for lr in lrs:
        for m in methods:
            if m == "linear_oracle":
                cands = [f"linear_{n}" for n in lengths]
                best = min(
                    cands,
                    key=lambda c: mean(
                        [r["final_loss"] for r in runs if r["method"] == c and r["lr"] == lr]
                    ),
                )
                sel = [r for r in runs if r["method"] == best and r["lr"] == lr]
                label = f"linear_oracle ({best.split('_')[1]} steps)"
            else:
                sel = [r for r in runs if r["method"] == m and r["lr"] == lr]
                label = m
            rows.append({
                "lr": lr, "method": m, "label": label,
                "final_loss": mean([r["final_loss"] for r in sel]),
                "val_acc": mean([r["val_acc"] for r in sel]),
                "failures": sum(r["failed"] for r in sel),
                "stalls": sum(r["stalled"] for r in sel), "seeds": len(sel),
                "early_loss": mean([r["early_loss"] for r in sel]),
            })  # fmt: skip
    return rows


def sensitivity(rows: list[dict], loss0: float) -> dict[str, float]:
    """LR sensitivity (Wortsman et al. 2023): mean over the grid of min(L, L0) minus the best L."""
    out = {}
    for m in {r["method"] for r in rows}:
        ls = [r["final_loss"] for r in rows if r["method"] == m]
        out[m] = sum(min(v, loss0) for v in ls) / len(ls) - min(ls)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    git_commit()  # stamp the results with the code as it is when the run starts
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), default="mse")
    ap.add_argument("--tiny", action="store_true", help="a few steps: checks the script runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="seeds 0..N-1 per method and lr (default 5: at the highest rates single runs flip "
        "between training and stalling, so fewer seeds make the table a coin toss)",
    )
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(1)
    steps, lrs, kind, batch = TASKS[args.task]
    seeds, width = list(range(args.seeds)), 128
    if args.tiny:
        steps, seeds, lrs, width = 12, [0], [1e-2], 32
    lengths = oracle_lengths(steps)
    methods = ["adam", "warmopt", "radam", "untuned_linear", "linear_oracle"]
    runnable = [m for m in methods if m != "linear_oracle"] + [f"linear_{n}" for n in lengths]
    data = load_data()
    jobs = [(m, lr, s) for lr in lrs for s in seeds for m in runnable]
    try:
        from tqdm import tqdm

        jobs_iter: Any = tqdm(jobs, desc="training", unit="run")
    except ImportError:
        jobs_iter = jobs
    t0 = time.perf_counter()
    runs = [train(m, lr, s, data, steps, width, kind, batch) for m, lr, s in jobs_iter]
    elapsed = time.perf_counter() - t0
    rows = summarize(runs, methods, lrs, lengths)
    loss0 = sum(r["loss0"] for r in runs) / len(runs)
    sens = sensitivity(rows, loss0)
    table = _markdown(rows, sens, lrs, methods)
    print(table)
    meta = {
        "torch": torch.__version__, "machine": platform.platform(),
        "python": platform.python_version(),
        "commit": git_commit(), "task": args.task, "loss": kind, "batch": batch or "full",
        "steps": steps, "seeds": seeds, "width": width,
        "seconds": round(elapsed, 1), "tiny": args.tiny,
    }  # fmt: skip
    result = {"meta": meta, "rows": rows, "sensitivity": sens, "loss0": loss0}
    stem = ("demo" if args.task == "mse" else f"demo_{args.task}") + ("_tiny" if args.tiny else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{stem}.md").write_text(table)
    _plot(runs, rows, methods, lrs, args.out, stem, args.task)
    print(f"{len(runs)} runs in {elapsed:.0f} s; results in {args.out}")
    return result


def _markdown(
    rows: list[dict], sens: dict[str, float], lrs: list[float], methods: list[str]
) -> str:
    lines = [
        "Final training loss (mean over seeds; `*` = a run failed: non-finite or no better than "
        "at initialisation; `†` = a run stalled: within 2 % of the constant predictor's loss, "
        "i.e. it learned nothing about the images)",
        "",
        "| method | "
        + " | ".join(f"lr={lr:g}" for lr in lrs)
        + " | LR sensitivity | failed | stalled |",
        "|---|" + "---|" * (len(lrs) + 3),
    ]
    for m in methods:
        cells, fails, stalls = [], 0, 0
        for lr in lrs:
            (r,) = [r for r in rows if r["method"] == m and r["lr"] == lr]
            fails += r["failures"]
            stalls += r["stalls"]
            mark = "*" if r["failures"] else ("†" if r["stalls"] else "")
            cells.append(f"{r['final_loss']:.3f}{mark}")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {sens[m]:.3f} | {fails} | {stalls} |")
    header = "| method | " + " | ".join(f"lr={lr:g}" for lr in lrs) + " |"
    lines += ["", "Validation accuracy", "", header,
              "|---|" + "---|" * len(lrs)]  # fmt: skip
    for m in methods:
        cells = []
        for lr in lrs:
            (r,) = [r for r in rows if r["method"] == m and r["lr"] == lr]
            cells.append(f"{r['val_acc']:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    oracle = [r["label"] for r in rows if r["method"] == "linear_oracle"]
    lines += ["", "Hand-tuned linear warm-up picked per lr: " + ", ".join(
        f"lr={lr:g}: {o.split('(')[1].rstrip(')')}" for lr, o in zip(lrs, oracle))]  # fmt: skip
    return "\n".join(lines) + "\n"


def _plot(
    runs: list[dict],
    rows: list[dict],
    methods: list[str],
    lrs: list[float],
    out: Path,
    stem: str,
    task: str,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        ys = [
            next(r["final_loss"] for r in rows if r["method"] == m and r["lr"] == lr) for lr in lrs
        ]
        ax.plot(lrs, [min(y, 10.0) for y in ys], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final training loss")
    ax.set_title(f"digits MLP, {task}: final loss vs learning rate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{stem}_lr.png", dpi=110)
    plt.close(fig)
    tops = sorted(lrs)[-2:]  # the two highest rates: where warm-up matters
    fig, axes = plt.subplots(1, len(tops), figsize=(5 * len(tops), 4), squeeze=False)
    for ax, top in zip(axes[0], tops):
        for m in [m for m in methods if m != "linear_oracle"]:
            sel = [r for r in runs if r["method"] == m and r["lr"] == top and r["seed"] == 0]
            if sel:
                c = sel[0]["curve"]
                k = max(1, len(c) // 60)
                smooth = [sum(c[i : i + k]) / len(c[i : i + k]) for i in range(0, len(c), k)]
                ax.plot([i * k for i in range(len(smooth))], smooth, label=m)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (batch, smoothed)")
        ax.set_title(f"loss curves at lr={top:g}, seed 0")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{stem}_curves.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
