"""The main job: warmopt beside the usual warm-ups on real data, with a verdict, in a few minutes.

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
* ``warmopt``         warmopt.Adam, its default warm-up policy (no warm-up length to set)
* ``radam``           torch.optim.RAdam
* ``untuned_linear``  torch.optim.Adam + pytorch_warmup.UntunedLinearWarmup (2/(1-beta2) steps)
* ``linear_oracle``   torch.optim.Adam + linear warm-up of 5 %, 20 % or 50 % of the steps: the
                      best of the three at each learning rate, picked on the final training loss
                      over all seeds (hand-tuned, after the fact)

What it reports: per method and learning rate the final training loss and validation accuracy
(mean +- 2 standard errors over seeds), how many seeds stalled or failed, the LR sensitivity S
(Wortsman et al. 2023; lower = more robust) with a bootstrap interval over seeds, and a verdict
in plain words: which method was most LR-robust, by how much, and whether that lead is larger than
the noise between seeds (a paired bootstrap over seeds of the difference in S). For warmopt it
also reports its warm-up per learning rate and which runs blew up (the loss, once below a tenth of
the constant predictor's, back above half of it) and whether every weight matrix was then still
capped (scale below 1).

Why 12 seeds: at the highest learning rates single runs sit at the edge of stability, where a
change of float rounding (another CPU, another build of torch) flips runs between training and
stalling. A verdict must not hang on single runs, so the default takes enough seeds for the
spread to be measured, and the verdict only claims differences larger than it. ``--jitter``
simulates such a change (every initial weight moved by about one float32 rounding step); with 12
seeds the verdict's groups -- who is tied with the best, who is behind it beyond noise -- are the
same with and without it on the reference machine (docs/benchmarks.md).

Usage::

    python -m benchmarks.demo                 # ~3 min on 2 idle CPU cores; ./warmopt-results/
    python -m benchmarks.demo --out DIR       # results in DIR instead
    python -m benchmarks.demo --reference     # rewrite the committed benchmarks/results/demo.*
    python -m benchmarks.demo --seeds 4       # faster, with a wider spread
    python -m benchmarks.demo --jitter        # a change of machine, simulated (demo_jitter.*)
    python -m benchmarks.demo --warmopt-policy ramp    # the ramp, rewarm=False (demo_ramp.*)
    python -m benchmarks.demo --task ce       # the mini-batch cross-entropy variant
    python -m benchmarks.demo --tiny          # seconds: the smoke test's setting

Writes ``demo.json``, ``demo.md`` (the printed report), ``demo_lr.png`` (final loss and
validation accuracy vs learning rate) and ``demo_curves.png`` (loss curves at the highest rates)
into the output folder (``demo_ce*`` for ``--task ce``, ``*_tiny*`` for ``--tiny``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import warmopt
from benchmarks.harness import finite, git_commit

#: The committed reference results (``--reference``); a user's run writes to DEFAULT_OUT.
RESULTS = Path(__file__).resolve().parent / "results"
#: Relative to the working directory, and in .gitignore: a run leaves the checkout clean.
DEFAULT_OUT = Path("warmopt-results")
#: Linear warm-up lengths tried by the hand-tuned oracle, as fractions of the run.
ORACLE_FRACTIONS = (0.05, 0.2, 0.5)
#: Per task: steps, learning rates, loss name, batch size (0 = full batch).
TASKS: dict[str, tuple[int, list[float], str, int]] = {
    "mse": (250, [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], "mse", 0),
    "ce": (600, [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "ce", 64),
}
METHODS = ["adam", "warmopt", "radam", "untuned_linear", "linear_oracle"]
#: What each method is, in the words the report uses.
METHOD_TEXT = {
    "adam": "torch.optim.Adam, full learning rate from the first step",
    "warmopt": "warmopt.Adam with its default warm-up policy; nothing to set",
    "radam": "torch.optim.RAdam: a warm-up-like factor fixed by the step count and beta2",
    "untuned_linear": "Adam + pytorch_warmup.UntunedLinearWarmup, a linear ramp over "
    "2/(1-beta2) = 2000 steps",
    "linear_oracle": "Adam + linear warm-up of 5, 20 or 50 % of the run, the best of the three "
    "picked per learning rate after the fact (what hand-tuning buys)",
}
#: A run "stalled" when its final loss is within this fraction of the constant predictor's.
STALL_MARGIN = 0.02
#: Default number of seeds: with 12 a simulated change of machine (``--jitter``) leaves the
#: verdict's groups unchanged on the reference machine (see the module docstring).
SEEDS = 12
#: Bootstrap resamples of the seeds for the intervals of S and of the differences in S.
BOOTSTRAP = 2000
#: warmopt's policy in a run (``--warmopt-policy``): the default, or the ramp (the same cap with
#: a running maximum: the scale only rises, and the warm-up ends the first time every scale is 1).
WARMOPT_POLICIES: dict[str, Callable[[], Any]] = {
    "default": lambda: "measured",
    "ramp": lambda: warmopt.Measured(rewarm=False),
}
#: A run "blew up" when, after its loss had fallen below BLOWUP_LOW x the constant predictor's,
#: it rose back above BLOWUP_HIGH x that loss.
BLOWUP_LOW, BLOWUP_HIGH = 0.1, 0.5


def oracle_lengths(steps: int) -> list[int]:
    """The oracle's warm-up lengths in steps (fewer than three only in a very short run)."""
    return list(dict.fromkeys(max(2, int(f * steps)) for f in ORACLE_FRACTIONS))


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


@functools.cache
def _data() -> Data:
    """The split, loaded once per process (workers forked after the first call inherit it)."""
    return load_data()


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


def make_method(name: str, params: Any, lr: float, policy: str = "default") -> _Schedule:
    betas = (0.9, 0.999)
    if name == "adam":
        return _Schedule(torch.optim.Adam(params, lr=lr, betas=betas), None)
    if name == "warmopt":
        warmup = WARMOPT_POLICIES[policy]()
        return _Schedule(warmopt.Adam(params, lr=lr, betas=betas, warmup=warmup), None)
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


@dataclass(frozen=True)
class Setting:
    """What every run of one invocation shares."""

    steps: int
    width: int
    kind: str
    batch: int
    jitter: bool = False
    warmopt_policy: str = "default"


def jitter_(model: torch.nn.Module, seed: int) -> None:
    """Multiply every initial weight by ``1 + 2**-23 z`` (z standard normal, fixed per seed): about
    half the weights move by one float32 rounding step, about what another CPU or build of torch
    changes in the first steps. Which verdicts survive it is which ones a change of machine
    leaves alone."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 2.0**-23 * torch.randn(p.shape, generator=gen))


def train(name: str, lr: float, seed: int, setting: Setting) -> dict[str, Any]:
    """One run; ``final_loss`` is the training loss after the last step, on the whole training
    set, capped at the loss at initialisation (a diverged run counts as no progress)."""
    data, s = _data(), setting
    t0 = time.process_time()
    model = make_model(seed, s.width)
    if s.jitter:
        jitter_(model, seed)
    params = list(model.parameters())
    method = make_method(name, params, lr, s.warmopt_policy)
    matrices = [i for i, p in enumerate(params) if p.dim() >= 2]
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        loss0 = float(loss_fn(s.kind, model(data.x_train), data.y_train))
    curve: list[float] = []
    scales: list[float] = []  # warmopt's median per-tensor scale after each step
    capped: list[float] = []  # and the largest scale of its weight matrices
    for _ in range(s.steps):
        if s.batch:
            idx = torch.randint(0, len(data.x_train), (s.batch,), generator=gen)
            loss = loss_fn(s.kind, model(data.x_train[idx]), data.y_train[idx])
        else:
            loss = loss_fn(s.kind, model(data.x_train), data.y_train)
        method.opt.zero_grad(set_to_none=True)
        loss.backward()
        method.step()
        curve.append(loss.item())
        if isinstance(method.opt, warmopt.WarmupOptimizer):  # a sync; fine in a benchmark
            per_tensor = torch.cat(method.opt.warmup_scale)
            scales.append(float(per_tensor.median()))
            capped.append(float(per_tensor[matrices].max()))
        if not math.isfinite(curve[-1]):
            break
    with torch.no_grad():
        final = float(loss_fn(s.kind, model(data.x_train), data.y_train))
        acc = float((model(data.x_val).argmax(1) == data.y_val).float().mean())
    failed = (not math.isfinite(final)) or final >= loss0
    constant = constant_loss(s.kind, data.y_train)
    stall = (1 - STALL_MARGIN) * constant
    blowup = _blowup(curve, constant)
    return {
        "method": name, "lr": lr, "seed": seed, "loss0": loss0,
        "final_loss": final if not failed else loss0,
        "val_acc": acc if math.isfinite(final) else 0.0,
        "failed": failed, "stalled": (not failed) and final >= stall,
        "curve": curve, "cpu_seconds": time.process_time() - t0,
        "blowup_step": blowup,
        **({"scale_first": scales[0], "warm_at": next(
            (i + 1 for i, x in enumerate(scales) if x >= 1.0), None),
            # the largest matrix scale of the step that blew up (the one before the jump)
            "blowup_scale": capped[blowup - 2] if blowup is not None and blowup >= 2 else None,
            } if scales else {}),
    }  # fmt: skip


def _blowup(curve: list[float], constant: float) -> int | None:
    """The step (from 1) whose loss, computed before its update, is back above
    ``BLOWUP_HIGH * constant`` after an earlier one fell below ``BLOWUP_LOW * constant``: the
    update before it threw a network that had learned back to the level of one that learned
    nothing. ``None`` if that never happens."""
    low = False
    for i, x in enumerate(curve):
        if low and not x < BLOWUP_HIGH * constant:  # NaN counts as blown up
            return i + 1
        low = low or x < BLOWUP_LOW * constant
    return None


def _run_job(job: tuple[str, float, int, Setting]) -> dict[str, Any]:
    return train(*job)


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_all(jobs: list[tuple[str, float, int, Setting]], workers: int) -> list[dict[str, Any]]:
    """Every job, in ``workers`` forked processes of one thread each, with a progress bar.

    Each run seeds its own weights and batches, so the results do not depend on ``workers``;
    they are returned in the order of ``jobs``."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover

        def tqdm(x: Any, **_: Any) -> Any:  # type: ignore[no-redef]
            return x

    _data()  # load before forking: every worker inherits it
    bar = {"total": len(jobs), "desc": "demo", "unit": "run"}
    if workers <= 1:
        return [_run_job(j) for j in tqdm(jobs, **bar)]
    import multiprocessing

    done: dict[int, dict[str, Any]] = {}
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        tagged = pool.imap_unordered(_run_indexed, list(enumerate(jobs)), chunksize=1)
        for i, r in tqdm(tagged, **bar):
            done[i] = r
    return [done[i] for i in range(len(jobs))]


def _run_indexed(item: tuple[int, tuple[str, float, int, Setting]]) -> tuple[int, dict[str, Any]]:
    return item[0], _run_job(item[1])


# --------------------------------------------------------------------------- statistics


class Grid:
    """The runs as arrays ``[lr, seed]`` per runnable method, and the statistics built on them."""

    def __init__(
        self, runs: list[dict[str, Any]], lrs: list[float], seeds: list[int], lengths: list[int]
    ) -> None:
        import numpy as np

        self.lrs, self.seeds, self.lengths = lrs, seeds, lengths
        self.runnable = sorted({r["method"] for r in runs})
        li = {lr: i for i, lr in enumerate(lrs)}
        si = {s: i for i, s in enumerate(seeds)}
        shape = (len(lrs), len(seeds))
        self.loss = {m: np.full(shape, np.nan) for m in self.runnable}
        self.acc = {m: np.full(shape, np.nan) for m in self.runnable}
        self.failed = {m: np.zeros(shape, bool) for m in self.runnable}
        self.stalled = {m: np.zeros(shape, bool) for m in self.runnable}
        self.loss0 = np.full(len(seeds), np.nan)
        for r in runs:
            m, i, j = r["method"], li[r["lr"]], si[r["seed"]]
            self.loss[m][i, j] = r["final_loss"]
            self.acc[m][i, j] = r["val_acc"]
            self.failed[m][i, j] = r["failed"]
            self.stalled[m][i, j] = r["stalled"]
            self.loss0[j] = r["loss0"]  # the same for every method: same initial weights

    def oracle_pick(self, seed_idx: Any = None) -> list[str]:
        """Per lr, the linear warm-up length with the lowest mean final loss over the seeds."""
        cands = [f"linear_{n}" for n in self.lengths]
        picks = []
        for i in range(len(self.lrs)):
            means = [self._take(self.loss[c][i], seed_idx).mean() for c in cands]
            picks.append(cands[min(range(len(cands)), key=means.__getitem__)])
        return picks

    @staticmethod
    def _take(a: Any, seed_idx: Any) -> Any:
        return a if seed_idx is None else a[..., seed_idx]

    def cells(self, method: str, picks: list[str] | None = None) -> dict[str, Any]:
        """Arrays ``[lr, seed]`` of one method; the oracle's rows come from its picked lengths."""
        import numpy as np

        if method != "linear_oracle":
            src = [method] * len(self.lrs)
        else:
            src = picks if picks is not None else self.oracle_pick()
        out = {}
        for key in ("loss", "acc", "failed", "stalled"):
            table = getattr(self, key)
            out[key] = np.stack([table[m][i] for i, m in enumerate(src)])
        return out

    def sensitivity(self, method: str, seed_idx: Any = None) -> float:
        """S = mean over the grid of min(L, L0) minus min over the grid of L, with L the mean over
        seeds of the final loss (each run already capped at its loss at initialisation) and L0
        the mean loss at initialisation (Wortsman et al. 2023)."""
        picks = self.oracle_pick(seed_idx) if method == "linear_oracle" else None
        loss = self._take(self.cells(method, picks)["loss"], seed_idx).mean(axis=1)
        l0 = self._take(self.loss0, seed_idx).mean()
        return float(loss.clip(max=l0).mean() - loss.min())

    def bootstrap(self, methods: list[str], resamples: int, seed: int = 0) -> dict[str, Any]:
        """S of each method on ``resamples`` resamples of the seeds (with replacement), the same
        resample for every method, so differences between methods are paired by seed."""
        import numpy as np

        rng = np.random.default_rng(seed)
        n = len(self.seeds)
        out = {m: np.empty(resamples) for m in methods}
        for b in range(resamples):
            idx = rng.integers(0, n, n)
            for m in methods:
                out[m][b] = self.sensitivity(m, idx)
        return out


def _se(a: Any, axis: int = -1) -> Any:
    """Standard error of the mean along ``axis`` (NaN for one sample)."""
    import numpy as np

    n = a.shape[axis]
    if n < 2:
        return np.full(np.mean(a, axis=axis).shape, np.nan)
    return np.std(a, axis=axis, ddof=1) / math.sqrt(n)


def summarize(grid: Grid, methods: list[str], resamples: int, constant: float) -> dict[str, Any]:
    """Per method: S with its bootstrap interval, per-cell means and spreads, counts; the
    verdict's numbers (best, runner-up, paired differences). ``constant`` is the loss of the
    constant predictor (the stall level), kept for the report and the plots."""
    import numpy as np

    picks = grid.oracle_pick()
    per_method: dict[str, Any] = {}
    for m in methods:
        c = grid.cells(m, picks if m == "linear_oracle" else None)
        ok = ~(c["failed"] | c["stalled"])
        stable = [lr for lr, good in zip(grid.lrs, ok.all(axis=1)) if good]
        per_method[m] = {
            "S": grid.sensitivity(m),
            "loss_mean": c["loss"].mean(axis=1).tolist(),
            "loss_2se": (2 * _se(c["loss"])).tolist(),
            "loss_q1": np.quantile(c["loss"], 0.25, axis=1).tolist(),
            "loss_q3": np.quantile(c["loss"], 0.75, axis=1).tolist(),
            "acc_mean": c["acc"].mean(axis=1).tolist(),
            "acc_2se": (2 * _se(c["acc"])).tolist(),
            "failed": c["failed"].sum(axis=1).tolist(),
            "stalled": c["stalled"].sum(axis=1).tolist(),
            # the largest lr at which, and at every smaller lr, no seed stalled or failed
            "stable_up_to": _stable_prefix(grid.lrs, ok.all(axis=1).tolist()),
            "stable_lrs": stable,
        }
    boot = grid.bootstrap(methods, resamples) if len(grid.seeds) > 1 else None
    for m in methods:
        lo, hi = (
            (float(np.quantile(boot[m], 0.025)), float(np.quantile(boot[m], 0.975)))
            if boot is not None
            else (math.nan, math.nan)
        )
        per_method[m]["S_interval"] = [lo, hi]
    order = sorted(methods, key=lambda m: per_method[m]["S"])
    best = order[0]
    diffs = {}
    for m in order[1:]:
        d = per_method[m]["S"] - per_method[best]["S"]
        if boot is not None:
            db = boot[m] - boot[best]
            lo, hi = float(np.quantile(db, 0.025)), float(np.quantile(db, 0.975))
        else:
            lo = hi = math.nan
        diffs[m] = {"diff": d, "interval": [lo, hi], "beyond_noise": bool(lo > 0)}
    # what the warm-up buys: warmopt against the same Adam without warm-up, paired by seed
    against = {}
    if "adam" in methods and "warmopt" in methods:
        d = per_method["adam"]["S"] - per_method["warmopt"]["S"]
        lo = hi = math.nan
        if boot is not None:
            db = boot["adam"] - boot["warmopt"]
            lo, hi = float(np.quantile(db, 0.025)), float(np.quantile(db, 0.975))
        against["adam"] = {"diff": d, "interval": [lo, hi], "beyond_noise": bool(lo > 0 or hi < 0)}
    share_best = (
        {m: float(np.mean(np.argmin(np.stack([boot[k] for k in methods]), 0) == i))
         for i, m in enumerate(methods)}
        if boot is not None else None
    )  # fmt: skip
    return {
        "methods": per_method,
        "oracle_lengths": [int(p.split("_")[1]) for p in picks],
        "order": order,
        "best": best,
        "differences_to_best": diffs,
        "warmopt_against": against,
        "share_lowest_S": share_best,
        "resamples": resamples if boot is not None else 0,
        "constant_loss": constant,
    }


def _stable_prefix(lrs: list[float], ok: list[bool]) -> float | None:
    top = None
    for lr, good in zip(lrs, ok):
        if not good:
            break
        top = lr
    return top


# --------------------------------------------------------------------------- the report


def verdict(summary: dict[str, Any], seeds: int) -> list[str]:
    """The verdict in plain words, one sentence a line."""
    ms, best = summary["methods"], summary["best"]
    order, diffs = summary["order"], summary["differences_to_best"]
    sb = ms[best]["S"]
    lines = []
    if seeds < 2:
        runner = order[1]
        lines.append(
            f"Lowest LR sensitivity: {best} (S = {sb:.3f}; runner-up {runner}, "
            f"S = {ms[runner]['S']:.3f}). One seed only: the noise between seeds is not "
            "measured, so this ranking says nothing; run with more seeds."
        )
        return lines
    lo, hi = ms[best]["S_interval"]
    runner = order[1]
    d = diffs[runner]
    rel = d["diff"] / ms[runner]["S"] if ms[runner]["S"] > 0 else math.nan
    share = summary["share_lowest_S"][best]
    tied = [m for m in order[1:] if not diffs[m]["beyond_noise"]]
    behind = [m for m in order[1:] if diffs[m]["beyond_noise"]]
    span = f"{_signed(d['interval'][0])} to {_signed(d['interval'][1])}"
    if d["beyond_noise"]:
        lines.append(
            f"Most LR-robust: {best}, S = {sb:.3f} (95 % interval {lo:.3f} to {hi:.3f}). "
            f"It leads the runner-up, {runner} (S = {ms[runner]['S']:.3f}), by {d['diff']:.3f} "
            f"({100 * rel:.0f} % lower), larger than the noise between seeds: the paired 95 % "
            f"interval of the difference, {span}, excludes 0."
        )
    else:
        lines.append(
            f"Lowest LR sensitivity: {best}, S = {sb:.3f} (95 % interval {lo:.3f} to {hi:.3f}), "
            f"but its lead over the runner-up, {runner} (S = {ms[runner]['S']:.3f}), is "
            f"{d['diff']:.3f} and within noise: the paired 95 % interval of the difference, "
            f"{span}, includes 0 ({best} has the lowest S in {100 * share:.0f} % of the "
            "resamples of the seeds)."
        )
        lines.append(
            "Within noise of the best, so tied for most LR-robust: "
            + ", ".join(f"{m} (S = {ms[m]['S']:.3f})" for m in [best, *tied])
            + "."
        )
    if behind:
        lines.append(
            f"Less LR-robust than {best} beyond noise: "
            + "; ".join(
                f"{m}, S = {ms[m]['S']:.3f} (+{diffs[m]['diff']:.3f}, paired interval "
                f"{_signed(diffs[m]['interval'][0])} to {_signed(diffs[m]['interval'][1])})"
                for m in behind
            )
            + "."
        )
    if best != "warmopt" and "adam" in summary["warmopt_against"]:
        a = summary["warmopt_against"]["adam"]
        lo_a, hi_a = a["interval"]
        lines.append(
            f"Against the same Adam without warm-up (S = {ms['adam']['S']:.3f}), warmopt's S "
            f"is {'lower' if a['diff'] > 0 else 'higher'} by {abs(a['diff']):.3f} (paired "
            f"interval of adam - warmopt {_signed(lo_a)} to {_signed(hi_a)}): "
            + ("larger than the noise." if a["beyond_noise"] else "within noise.")
        )
    stable = [
        f"{m} {ms[m]['stable_up_to']:g}" if ms[m]["stable_up_to"] is not None else f"{m} none"
        for m in order
    ]
    lines.append(
        f"Stable up to (the largest learning rate at and below which none of the {seeds} seeds "
        "stalled or failed): " + ", ".join(stable) + "."
    )
    return lines


def _groups(summary: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The verdict's groups: the best and those within noise of it; those behind beyond noise."""
    diffs = summary["differences_to_best"]
    behind = [m for m in summary["order"][1:] if diffs[m]["beyond_noise"]]
    return [m for m in summary["order"] if m not in behind], behind


def against_plain(plain: dict[str, Any], runs: list[dict[str, Any]], summary: dict[str, Any]
                  ) -> list[str]:  # fmt: skip
    """How a ``--jitter`` run differs from the plain run of the same settings: runs that went
    from training to stalling or failing (or back), and whether the verdict's groups moved."""
    before = {(r["method"], r["lr"], r["seed"]): r for r in plain["runs"]}
    pairs = [(before.get((r["method"], r["lr"], r["seed"])), r) for r in runs]
    if any(b is None for b, _ in pairs) or len(before) != len(runs):
        return ["The plain run in the same folder has other settings: not compared."]
    bad = lambda r: r["failed"] or r["stalled"]  # noqa: E731
    flips = sum(bad(b) != bad(r) for b, r in pairs)
    moved = sum(b["final_loss"] != r["final_loss"] for b, r in pairs)
    (tied0, behind0), (tied1, behind1) = _groups(plain["summary"]), _groups(summary)
    same = set(tied0) == set(tied1) and set(behind0) == set(behind1)
    return [
        f"{flips} of {len(runs)} runs changed between training and stalling or failing; "
        f"{moved} ended at a different loss.",
        f"Tied for most LR-robust: ({', '.join(tied0)}) without jitter, ({', '.join(tied1)}) "
        f"with it. Behind beyond noise: ({', '.join(behind0)}) without, ({', '.join(behind1)}) "
        "with it. "
        + ("The verdict's groups are the same." if same else "The verdict's groups moved."),
    ]


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def legend(setting: Setting, seeds: int, constant: float, resamples: int) -> list[str]:
    what = "full-batch training loss" if not setting.batch else "training loss (whole set)"
    return [
        f"* Final loss: the {what} after the last step, on all training images; a failed run "
        "counts as its loss at initialisation.",
        f"* `±`: twice the standard error of the mean over the {seeds} seeds (about a 95 % "
        "interval for the mean).",
        "* LR sensitivity S (Wortsman et al. 2023): the mean over the learning-rate grid of the "
        "final loss (capped at the loss at initialisation) minus the best final loss on the grid. "
        "0 = as good at every learning rate as at the best one; lower = more robust to the "
        "choice of learning rate.",
        f"* Interval of S: 2.5th to 97.5th percentile of S over {resamples} bootstrap resamples "
        "of the seeds (the same resample for every method, so differences are paired by seed). "
        "A lead is 'larger than the noise' when the paired interval of the difference "
        "excludes 0.",
        f"* `†k`: k seeds stalled: final loss within {100 * STALL_MARGIN:.0f} % of the constant "
        f"predictor's ({constant:.3f}): the network learned nothing about the images.",
        "* `*k`: k seeds failed: non-finite loss or no better than at initialisation.",
        "* Stable up to: the largest learning rate at and below which no seed stalled or failed.",
    ]


def warmup_lengths(runs: list[dict[str, Any]], lrs: list[float]) -> list[dict[str, Any]]:
    """Per lr, over the seeds: warmopt's median scale after its first step, and the step at
    which that median first reached 1 (None for a seed still warming at the end)."""
    out = []
    for lr in lrs:
        rs = [r for r in runs if r["method"] == "warmopt" and r["lr"] == lr and "warm_at" in r]
        if not rs:
            continue
        ends = [r["warm_at"] for r in rs]
        done = sorted(e for e in ends if e is not None)
        blown = [r for r in rs if r.get("blowup_step") is not None]
        out.append({
            "lr": lr, "scale_first": statistics.median(r["scale_first"] for r in rs),
            "warm_at_median": float(statistics.median(done)) if len(done) * 2 > len(ends)
            else None,
            "still_warming": len(ends) - len(done), "seeds": len(ends),
            "blown_up": len(blown),
            "blown_up_capped": sum(1 for r in blown if r["blowup_scale"] is not None
                                   and r["blowup_scale"] < 1.0),
        })  # fmt: skip
    return out


def warmup_lines(rows: list[dict[str, Any]], steps: int) -> list[str]:
    if not rows:
        return []
    cells = []
    for r in rows:
        end = (f"scale 1 at step {r['warm_at_median']:g}" if r["warm_at_median"] is not None
               else f"still below 1 at step {steps}")  # fmt: skip
        late = f", {r['still_warming']} of {r['seeds']} seeds still warming" \
            if r["still_warming"] and r["warm_at_median"] is not None else ""  # fmt: skip
        cells.append(f"{r['lr']:g}: {r['scale_first']:.3f} -> {end}{late}")
    lines = ["warmopt's warm-up at each lr (median over seeds of the median per-tensor scale: "
             "after the first step -> the step it first reached 1): " + "; ".join(cells), ""]
    blown = [r for r in rows if r.get("blown_up")]
    if blown:
        lines += [
            f"warmopt's runs that blew up (the loss, after falling below {BLOWUP_LOW:g}x the "
            f"constant predictor's, back above {BLOWUP_HIGH:g}x it): "
            + "; ".join(f"{r['lr']:g}: {r['blown_up']} of {r['seeds']} seeds, "
                        f"{r['blown_up_capped']} of them on a step where every weight matrix "
                        "was still below scale 1" for r in blown),
            "",
        ]  # fmt: skip
    return lines


def against_lines(summary: dict[str, Any]) -> list[str]:
    if not summary.get("against_plain"):
        return []
    return ["## Against the same run without --jitter", "", *summary["against_plain"], ""]


def report(
    summary: dict[str, Any],
    meta: dict[str, Any],
    setting: Setting,
    lrs: list[float],
    methods: list[str],
) -> str:
    ms, n = summary["methods"], len(meta["seeds"])
    what = "full batch" if not setting.batch else f"mini-batches of {setting.batch}"
    loss = "squared error on one-hot targets" if setting.kind == "mse" else "cross-entropy"
    lines = [
        f"# Demo: learning-rate robustness on digits ({meta['task']})",
        "",
        f"3-layer ReLU MLP (64-{setting.width}-{setting.width}-10), {loss}, {what}, "
        f"{setting.steps} steps, Adam betas (0.9, 0.999), constant learning rate; {n} seeds x "
        f"{len(lrs)} learning rates ({meta['runs']} runs, the oracle's three lengths included), "
        f"{meta['workers']} worker(s) x 1 thread, {meta['seconds']:.0f} s "
        f"({meta['cpu_seconds']:.0f} s of CPU time). "
        f"torch {meta['torch']}, {meta['machine']}, {meta['cpus']} CPUs, commit {meta['commit']}."
        + (
            " Initial weights jittered by about one float32 rounding step (`--jitter`)."
            if setting.jitter
            else ""
        ),
        "",
        "Methods:",
        "",
        *[f"* **{m}**: {METHOD_TEXT[m]}" for m in methods],
        "",
        f"warmopt's default policy in this run: `{meta['warmopt_default_policy']}`."
        + ("" if meta.get("warmopt_policy", "default") == "default" else
           f" Here warmopt runs `--warmopt-policy {meta['warmopt_policy']}`: "
           f"`{meta['warmopt_policy_repr']}`, not the default."),
        "",
        "## LR sensitivity",
        "",
        "| method | S (lower = more robust) | 95 % interval | stable up to | failed | stalled |",
        "|---|---|---|---|---|---|",
    ]
    for m in summary["order"]:
        r = ms[m]
        lo, hi = r["S_interval"]
        top = "none" if r["stable_up_to"] is None else f"{r['stable_up_to']:g}"
        lines.append(
            f"| {m} | {r['S']:.3f} | {lo:.3f} to {hi:.3f} | {top} | {sum(r['failed'])} | "
            f"{sum(r['stalled'])} |"
        )
    header = "| method | " + " | ".join(f"lr={lr:g}" for lr in lrs) + " |"
    rule = "|---|" + "---|" * len(lrs)
    lines += ["", f"## Final training loss (mean ± 2 s.e. over {n} seeds)", "", header, rule]
    for m in methods:
        r = ms[m]
        cells = []
        for i in range(len(lrs)):
            mark = (f" †{r['stalled'][i]}" if r["stalled"][i] else "") + (
                f" *{r['failed'][i]}" if r["failed"][i] else ""
            )
            cells.append(f"{r['loss_mean'][i]:.3f} ± {_num(r['loss_2se'][i])}{mark}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", f"## Validation accuracy (mean ± 2 s.e. over {n} seeds)", "", header, rule]
    for m in methods:
        r = ms[m]
        cells = [f"{a:.3f} ± {_num(e)}" for a, e in zip(r["acc_mean"], r["acc_2se"])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Linear warm-up length picked for the oracle at each lr: "
        + ", ".join(f"{lr:g}: {k} steps" for lr, k in zip(lrs, summary["oracle_lengths"])),
        "",
        *warmup_lines(summary.get("warmopt_warmup", []), setting.steps),
        "## How to read this",
        "",
        *legend(setting, n, meta["constant_loss"], summary["resamples"]),
        "",
        *against_lines(summary),
        "## Verdict",
        "",
        *summary["verdict"],
    ]
    return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    git_commit()  # stamp the results with the code as it is when the run starts
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), default="mse")
    ap.add_argument("--tiny", action="store_true", help="a few steps: checks the script runs")
    where = ap.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for the results (default: ./{DEFAULT_OUT}/, outside the tracked tree)",
    )
    where.add_argument(
        "--reference",
        action="store_true",
        help=f"write the committed reference results ({RESULTS.relative_to(RESULTS.parents[1])})",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds 0..N-1 per method and lr (default {SEEDS}: at the highest rates single runs "
        "flip between training and stalling, so few seeds leave the ranking to chance)",
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="worker processes, 1 thread each (default 2)"
    )
    ap.add_argument(
        "--warmopt-policy",
        choices=sorted(WARMOPT_POLICIES),
        default="default",
        help="warmopt's policy: its default, or 'ramp' (rewarm=False: the same cap with "
        "a running maximum, so the warm-up ends the first time every scale is 1; files "
        "demo_ramp.*)",
    )
    ap.add_argument(
        "--jitter",
        action="store_true",
        help="change every initial weight by about one float32 rounding step (files demo_jitter.*):"
        " a change of machine, simulated; compare its verdict with a plain run's",
    )
    args = ap.parse_args(argv)
    if args.seeds is None:
        args.seeds = 2 if args.tiny else SEEDS
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    if args.reference and args.tiny:
        ap.error("--reference writes the committed results: not with --tiny")
    out = RESULTS if args.reference else (args.out if args.out is not None else DEFAULT_OUT)
    torch.set_num_threads(1)
    steps, lrs, kind, batch = TASKS[args.task]
    seeds, width = list(range(args.seeds)), 128
    if args.tiny:
        steps, lrs, width = 12, [1e-2, 1e-1], 32
    setting = Setting(steps, width, kind, batch, args.jitter, args.warmopt_policy)
    lengths = oracle_lengths(steps)
    runnable = [m for m in METHODS if m != "linear_oracle"] + [f"linear_{n}" for n in lengths]
    jobs = [(m, lr, s, setting) for lr in reversed(lrs) for s in seeds for m in runnable]
    t0 = time.perf_counter()
    runs = run_all(jobs, args.workers)
    elapsed = time.perf_counter() - t0

    grid = Grid(runs, lrs, seeds, lengths)
    constant = constant_loss(kind, _data().y_train)
    summary = summarize(grid, METHODS, BOOTSTRAP, constant)
    summary["verdict"] = verdict(summary, len(seeds))
    summary["warmopt_warmup"] = warmup_lengths(runs, lrs)
    meta = {
        "torch": torch.__version__, "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "commit": git_commit(),
        "task": args.task, "loss": kind, "batch": batch or "full", "steps": steps,
        "lrs": lrs, "seeds": seeds, "width": width, "workers": args.workers,
        "threads_per_worker": 1, "runs": len(runs), "seconds": round(elapsed, 1),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in runs), 1),
        "tiny": args.tiny, "jitter": args.jitter, "constant_loss": constant,
        "loss0": float(grid.loss0.mean()),
        "warmopt_default_policy": _default_policy(),
        "warmopt_policy": args.warmopt_policy,
        "warmopt_policy_repr": repr(WARMOPT_POLICIES[args.warmopt_policy]()),
    }  # fmt: skip
    stem = "demo" if args.task == "mse" else f"demo_{args.task}"
    policy = "" if args.warmopt_policy == "default" else f"_{args.warmopt_policy}"
    plain = out / f"{stem}{policy}{'_tiny' if args.tiny else ''}.json"
    stem += policy + ("_jitter" if args.jitter else "") + ("_tiny" if args.tiny else "")
    if args.jitter and plain.exists():
        summary["against_plain"] = against_plain(json.loads(plain.read_text()), runs, summary)
    text = report(summary, meta, setting, lrs, METHODS)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "meta": meta,
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
    }
    (out / f"{stem}.json").write_text(json.dumps(finite(result), indent=1, allow_nan=False))
    (out / f"{stem}.md").write_text(text)
    files = _plot(runs, grid, summary, meta, setting, out, stem)
    print(f"{len(runs)} runs in {elapsed:.0f} s; results in {out}/: "
          + ", ".join([f"{stem}.md", f"{stem}.json", *files]) + "\n")  # fmt: skip
    print(text, end="")  # the report, ending with the verdict
    result["files"] = [str(out / f) for f in [f"{stem}.md", f"{stem}.json", *files]]
    return result


def _default_policy() -> str:
    """The default warm-up policy of warmopt.Adam at the time of the run, as its repr shows it."""
    text = repr(warmopt.Adam([torch.zeros(1, requires_grad=True)]))
    found = [line.strip() for line in text.splitlines() if line.startswith("warmup:")]
    return found[0].removeprefix("warmup:").strip() if found else "unknown"


# --------------------------------------------------------------------------- plots

COLORS = {
    "adam": "#d62728",
    "warmopt": "#1f77b4",
    "radam": "#ff7f0e",
    "untuned_linear": "#2ca02c",
    "linear_oracle": "#7f7f7f",
}


def _plot(
    runs: list[dict[str, Any]],
    grid: Grid,
    summary: dict[str, Any],
    meta: dict[str, Any],
    setting: Setting,
    out: Path,
    stem: str,
) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return []
    files = [_plot_lr(plt, grid, summary, meta, setting, out, stem)]
    files.append(_plot_curves(plt, runs, grid, summary, meta, setting, out, stem))
    return files


def _label(method: str, setting: Setting) -> str:
    """A method's name in the plots: warmopt's says which policy it ran with when not its
    default."""
    if method == "warmopt" and setting.warmopt_policy != "default":
        return f"warmopt ({setting.warmopt_policy})"
    return method


def _plot_lr(plt: Any, grid: Grid, summary: dict[str, Any], meta: dict[str, Any],
             setting: Setting, out: Path, stem: str) -> str:  # fmt: skip
    """Final loss and validation accuracy vs lr: the mean over seeds with a ± 2 s.e. band, every
    seed as a dot, stalled seeds as x and failed ones as a star. The loss axis is linear: S is
    a mean of these losses, so what it weighs is what the eye sees."""
    import numpy as np
    from matplotlib.lines import Line2D

    ms, lrs, n = summary["methods"], np.array(grid.lrs), len(grid.seeds)
    picks = grid.oracle_pick()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(12, 5))
    k = len(METHODS)
    handles = []
    for j, m in enumerate(METHODS):
        c, col = grid.cells(m, picks if m == "linear_oracle" else None), COLORS[m]
        x = lrs * 1.1 ** ((j - (k - 1) / 2) / 2)  # the methods side by side at each lr
        r = ms[m]
        for ax, key, top in ((ax_l, "loss", math.inf), (ax_a, "acc", 1.0)):
            mean, e = np.array(r[f"{key}_mean"]), np.nan_to_num(np.array(r[f"{key}_2se"]))
            ax.plot(x, mean, "-o", color=col, lw=2, ms=5, zorder=3)
            ax.fill_between(x, np.maximum(mean - e, 0), np.minimum(mean + e, top), color=col,
                            alpha=0.15, lw=0)  # fmt: skip
            for i in range(len(lrs)):
                ok = ~(c["failed"][i] | c["stalled"][i])
                for sel, marker, size in ((ok, ".", 30), (c["stalled"][i], "x", 28),
                                          (c["failed"][i], "*", 60)):  # fmt: skip
                    if sel.any():
                        ax.scatter(np.full(int(sel.sum()), x[i]), c[key][i][sel], marker=marker,
                                   s=size, color=col, alpha=0.5, lw=1, zorder=2)  # fmt: skip
        handles.append(
            Line2D([], [], color=col, marker="o", lw=2, ms=5,
                   label=f"{_label(m, setting)} (S = {r['S']:.3f})")
        )
    constant = summary["constant_loss"]
    ax_l.axhline(constant, color="k", ls="--", lw=0.8)
    ax_l.text(lrs[0] * 0.75, constant * 1.02, "loss of the constant predictor (stalled)",
              fontsize=8, va="bottom")  # fmt: skip
    ax_a.axhline(0.1, color="k", ls=":", lw=0.8)
    ax_a.text(lrs[0] * 0.75, 0.11, "chance", fontsize=8, va="bottom")
    for ax in (ax_l, ax_a):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    what = "full-batch training loss" if not setting.batch else "training loss (whole set)"
    ax_l.set_ylim(0, 1.1 * max(meta["loss0"], constant))
    ax_l.set_ylabel(f"final {what}")
    ax_l.set_title(f"final {what} (lower is better)", fontsize=10)
    ax_a.set_ylim(0, 1.02)
    ax_a.set_ylabel("validation accuracy")
    ax_a.set_title("validation accuracy (higher is better)", fontsize=10)
    keys = [
        Line2D([], [], color="k", marker="o", lw=2, ms=5, label=f"mean of {n} seeds"),
        Line2D([], [], color="k", alpha=0.2, lw=8, label="± 2 s.e."),
        Line2D([], [], color="k", marker=".", ls="", ms=8, alpha=0.6, label="one seed"),
        Line2D([], [], color="k", marker="x", ls="", ms=6, alpha=0.6, label="one seed, stalled"),
        Line2D([], [], color="k", marker="*", ls="", ms=8, alpha=0.6, label="one seed, failed"),
    ]
    title = "method (LR sensitivity S: lower = more robust)"
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9,
               bbox_to_anchor=(0.5, 0.06), frameon=False, title=title,
               title_fontsize=9)  # fmt: skip
    fig.legend(handles=keys, loc="lower center", ncol=len(keys), fontsize=8,
               bbox_to_anchor=(0.5, 0.0), frameon=False)  # fmt: skip
    loss = "squared error" if setting.kind == "mse" else "cross-entropy"
    batch = "full batch" if not setting.batch else f"batch {setting.batch}"
    fig.suptitle(
        f"digits MLP, {loss}, {batch}, {setting.steps} steps at a constant learning rate, "
        f"{n} seeds per point (torch {meta['torch']}, commit {meta['commit']})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    name = f"{stem}_lr.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _plot_curves(plt: Any, runs: list[dict[str, Any]], grid: Grid, summary: dict[str, Any],
                 meta: dict[str, Any], setting: Setting, out: Path, stem: str) -> str:  # fmt: skip
    """Loss over steps at the highest learning rates: median over seeds and the quartile band,
    on a log axis clipped above the loss at initialisation (Adam's first steps reach far above
    it; the clipped peak is written in the panel)."""
    import numpy as np

    lrs = sorted(grid.lrs)[-3:]
    picks = dict(zip(grid.lrs, grid.oracle_pick()))
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.6 * len(lrs), 4.2), squeeze=False)
    top = 3.0 * meta["loss0"]
    n = len(grid.seeds)
    for ax, lr in zip(axes[0], lrs):
        peaks = []
        for m in METHODS:
            src = picks[lr] if m == "linear_oracle" else m
            curves = [r["curve"] for r in runs if r["method"] == src and r["lr"] == lr]
            steps = setting.steps
            a = np.full((len(curves), steps), np.nan)
            for i, cv in enumerate(curves):
                a[i, : len(cv)] = cv
            a = np.where(np.isfinite(a), a, np.nan)
            if setting.batch:  # mini-batch losses: a running mean over 10 steps
                kernel = np.ones(10) / 10
                a = np.stack([np.convolve(np.nan_to_num(row, nan=top), kernel, "valid")
                              for row in a])  # fmt: skip
            x = np.arange(1, a.shape[1] + 1)
            with np.errstate(all="ignore"):
                med = np.nanmedian(a, 0)
                q1, q3 = np.nanquantile(a, 0.25, 0), np.nanquantile(a, 0.75, 0)
            ax.plot(x, np.minimum(med, top), color=COLORS[m], lw=1.6)
            ax.fill_between(x, np.minimum(q1, top), np.minimum(q3, top), color=COLORS[m],
                            alpha=0.15, lw=0)  # fmt: skip
            peak = float(np.nanmax(med)) if np.isfinite(med).any() else math.inf
            if peak > top:
                peaks.append(f"{m}: median peaks at {peak:.3g} (step {int(np.nanargmax(med)) + 1})")
        ax.set_yscale("log")
        ax.set_ylim(top=top)
        ax.axhline(summary["constant_loss"], color="k", ls="--", lw=0.8)
        ax.set_xlabel("step")
        what = (
            "full-batch training loss (before each step)"
            if not setting.batch
            else "mini-batch training loss (mean of 10 steps)"
        )
        ax.set_ylabel(what)
        ax.set_title(f"lr = {lr:g}: median of {n} seeds, band = quartiles", fontsize=10)
        ax.grid(alpha=0.3)
        if peaks:
            ax.text(0.98, 0.97, "axis clipped at 3x the initial loss;\n" + "\n".join(peaks),
                    transform=ax.transAxes, ha="right", va="top", fontsize=7,
                    bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})  # fmt: skip
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=COLORS[m], lw=2, label=_label(m, setting))
               for m in METHODS[:-1]]  # fmt: skip
    lens = ", ".join(f"{picks[lr].split('_')[1]} at {lr:g}" for lr in lrs)
    handles.append(Line2D([], [], color=COLORS["linear_oracle"], lw=2,
                          label=f"linear_oracle (warm-up steps: {lens})"))  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9,
               frameon=False)  # fmt: skip
    fig.suptitle(
        f"loss over the steps at the {len(lrs)} highest learning rates, {n} seeds "
        "(dashed: loss of the constant predictor, where a stalled run ends)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    name = f"{stem}_curves.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


if __name__ == "__main__":
    main()
