"""LR-robustness benchmark: warmopt beside the usual warm-ups, on tuning and held-out tasks.

Tasks (``benchmarks/quality_tasks.py``; all data ships offline) come in three sets:

* **tuning** -- ``digits_ce``, ``digits_mse``, ``lm_post_ln``, ``lm_pre_ln``, ``gru_rmsprop``:
  every constant and design choice of warmopt's policies was made by looking at these;
* **held-out** -- ``digits_cnn``, ``cancer_mlp``, ``digits_ae``, ``code_tf_b95``,
  ``code_tf_b999``, ``code_lstm_rmsprop``: other data, architectures, optimizers and betas, fixed
  before any method ran on them and never used to choose a constant;
* **fresh held-out** -- ``wine_mlp_const``, ``diabetes_mlp``, ``code_tf_const``: added when the
  default changed from the ramp (``warmopt_ramp``) to the watched cap, a choice made on the tuning
  tasks and the demo after both designs' held-out results had been seen; fixed before their first
  run. Their table is the evidence for the current default.

Every run uses a cosine learning rate (``0.5 (1 + cos(pi s / steps))``, a ``LambdaLR``) and each
warm-up multiplies into it, except on the tasks whose schedule is ``constant`` (no decay: the
rate as given, times each warm-up); schedule-free AdamW replaces the schedule by design. For a
seed every method starts from the same weights and sees the same batches.

Methods (RMSprop tasks drop ``radam`` and ``schedulefree`` and use ``gi_rmsprop``; AdamW tasks
give every method the task's decoupled weight decay):

* ``none``                torch's optimizer, no warm-up
* ``linear_oracle``       linear warm-up over 5 %, 20 % or 50 % of the run, the best of the three
                          per LR on the final training loss (hand-tuned, picked after the fact)
* ``untuned_linear``      ``pytorch_warmup.UntunedLinearWarmup`` (2/(1-beta2) steps; on RMSprop,
                          whose group has no ``betas``, ``LinearWarmup`` with that rule on alpha)
* ``untuned_exponential`` ``pytorch_warmup.UntunedExponentialWarmup`` (RMSprop:
  ``ExponentialWarmup``)
* ``radam``               ``torch.optim.RAdam``
* ``gi_adam``/``gi_rmsprop``  the second moment initialised to ``g_0**2`` (Kalra & Barkeshli 2024)
* ``schedulefree``        ``schedulefree.AdamWScheduleFree(warmup_steps=0)``, evaluated in eval mode
* ``warmopt``             warmopt's default policy, nothing to set
* ``warmopt_ramp``        the same cap with a running maximum (``Measured(rewarm=False)``): the
                          scale only rises and the warm-up ends the first time it is 1
* ablations of the ramp (each with ``rewarm=False``): ``warmopt_v1`` (precision confidence and
  lag factor, no cap on the relative update), ``warmopt_conf`` (the cap and the precision
  confidence), ``warmopt_drift`` (the cap and the lag factor), ``warmopt_cap01`` /
  ``warmopt_cap03`` (``max_update`` 0.01 / 0.03 instead of 0.02), ``warmopt_own1d`` (vectors
  capped against their own norm instead of following the matrices), ``warmopt_group`` (one scale
  per param group); and ``warmopt_rewarm``, the default measured on every step
  (``watch_every=1``)

Metrics per task and method (L = final training loss on fixed training data, mean over seeds):
LR sensitivity S = mean over the grid of min(L, L0) - min over the grid of L (Wortsman et al.
2023); failures (non-finite or L >= L0) and stalls (failed, or L within 2 % of the best constant
predictor); the best validation loss over the grid and its difference to the oracle's; the final
loss at the smallest LR against no warm-up. Per set: S normalised by the task's loss range
(L0 minus the lowest L any method reached), averaged over the tasks; the targets below.

Usage::

    python -m benchmarks.quality                    # all three sets (about 47 min on 2 cores)
    python -m benchmarks.quality --split heldout    # the held-out set only
    python -m benchmarks.quality --split fresh      # the fresh held-out set only
    python -m benchmarks.quality --quick            # one seed, half the steps
    python -m benchmarks.quality --tiny             # seconds: the smoke test
    python -m benchmarks.quality --methods warmopt warmopt_cap03 --tasks lm_post_ln
    python -m benchmarks.quality --split tuning --methods warmopt --merge old/quality.json

``--merge FILE`` adds the runs stored in an earlier results file: this run's (task, method)
pairs replace theirs, the rest are reported as they were (same mode; the meta records each
file's commit). The results files keep final numbers, not curves, so the plot of loss curves is
drawn only by a run that redoes every task it shows with every plotted method (a merged run
leaves the earlier plot in place), and the plot of scale curves only when warmopt ran now on
its task.

Writes ``quality{,_quick,_tiny}.{json,md}`` and the plots ``quality_lr*.png`` (final loss vs LR),
``quality_scale*.png`` (warmopt's scale over the steps at each LR of one task) and
``quality_curves*.png`` (loss curves at a high LR) into ``--out`` (default
``benchmarks/results``); the last two only when the runs they draw were made in this run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import warmopt
from benchmarks.harness import finite, git_commit

from .quality_tasks import TaskSpec, get_problem, task_specs

RESULTS = Path(__file__).resolve().parent / "results"
STALL_MARGIN = 0.02
#: Untuned anchors: warm-ups with no length to tune (the targets compare against them).
UNTUNED_ANCHORS = ("untuned_linear", "untuned_exponential", "radam")
#: warmopt and its ablations: (policy, granularity); the policies are built per run.
WARMOPT: dict[str, tuple[Callable[[], Any], str]] = {
    "warmopt": (lambda: "measured", "tensor"),
    "warmopt_ramp": (lambda: warmopt.Measured(rewarm=False), "tensor"),
    "warmopt_v1": (
        lambda: warmopt.Measured(max_update=None, confidence=True, drift=True, rewarm=False),
        "tensor",
    ),
    "warmopt_conf": (lambda: warmopt.Measured(confidence=True, rewarm=False), "tensor"),
    "warmopt_drift": (lambda: warmopt.Measured(drift=True, rewarm=False), "tensor"),
    "warmopt_cap01": (lambda: warmopt.Measured(max_update=0.01, rewarm=False), "tensor"),
    "warmopt_cap03": (lambda: warmopt.Measured(max_update=0.03, rewarm=False), "tensor"),
    "warmopt_own1d": (lambda: warmopt.Measured(follow_vectors=False, rewarm=False), "tensor"),
    "warmopt_group": (lambda: warmopt.Measured(rewarm=False), "group"),
    "warmopt_rewarm": (lambda: warmopt.Measured(rewarm=True, watch_every=1), "tensor"),
}
ANCHORS = ["none", "linear_oracle", *UNTUNED_ANCHORS, "gi_adam", "gi_rmsprop", "schedulefree"]
ALL_METHODS = ANCHORS + list(WARMOPT)
#: Methods drawn in the plots (the ablations are in the tables only).
PLOTTED = ["none", "linear_oracle", *UNTUNED_ANCHORS, "gi_adam", "gi_rmsprop", "schedulefree",
           "warmopt"]  # fmt: skip


def methods_for(spec: TaskSpec, only: Collection[str] | None = None) -> list[str]:
    """The methods that apply to ``spec``'s optimizer, in table order."""
    rms = spec.optimizer == "rmsprop"
    skip = {"radam", "gi_adam", "schedulefree"} if rms else {"gi_rmsprop"}
    return [m for m in ALL_METHODS if m not in skip and (only is None or m in only)]


def runnable_for(spec: TaskSpec, only: Collection[str] | None = None) -> list[str]:
    """Methods as runs: ``linear_oracle`` stands for one run per candidate length."""
    out = []
    for m in methods_for(spec, only):
        out += [f"linear_{n}" for n in spec.oracle_lengths] if m == "linear_oracle" else [m]
    return out


# --------------------------------------------------------------------------- optimizers


class Runner:
    """An optimizer plus what runs after each step (the schedule, a warm-up's dampening)."""

    def __init__(self, opt: torch.optim.Optimizer, after: Callable[[], None] | None = None,
                 schedule_free: bool = False) -> None:  # fmt: skip
        self.opt, self.after, self.schedule_free = opt, after, schedule_free
        if schedule_free:
            opt.train()  # type: ignore[attr-defined]

    def step(self) -> None:
        self.opt.step()
        if self.after is not None:
            self.after()

    def eval_mode(self) -> None:
        if self.schedule_free:
            self.opt.eval()  # type: ignore[attr-defined]


def _torch_opt(spec: TaskSpec, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=spec.beta2)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, spec.beta2),
                                 weight_decay=spec.weight_decay)  # fmt: skip
    return torch.optim.Adam(params, lr=lr, betas=(0.9, spec.beta2))


def _gradient_init_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """GI-Adam / GI-RMSprop: before a tensor's first step, second moment := g_0^2 (step 0, m = 0).

    torch's ``_init_group`` creates state only where it is empty, so the first step updates this
    state: ``v_1 = beta2 g_0^2 + (1 - beta2) g_0^2 = g_0^2``.
    """
    from torch.optim.optimizer import _get_scalar_dtype

    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is None or opt.state[p]:
                continue
            st = opt.state[p]
            st["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            if isinstance(opt, torch.optim.RMSprop):
                st["square_avg"] = p.grad.detach().square()
            else:
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = p.grad.detach().square()


def build_runner(method: str, spec: TaskSpec, params: list[torch.Tensor], lr: float) -> Runner:
    """The optimizer of ``method`` with the shared cosine decay over ``spec.steps``."""
    steps = spec.steps

    def decay(s: int) -> float:
        if spec.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))

    def scheduled(opt: torch.optim.Optimizer, factor: Callable[[int], float] = decay) -> Runner:
        return Runner(opt, torch.optim.lr_scheduler.LambdaLR(opt, factor).step)

    betas = (0.9, spec.beta2)
    if method == "none":
        return scheduled(_torch_opt(spec, params, lr))
    if method.startswith("linear_"):
        n = int(method.split("_")[1])
        return scheduled(_torch_opt(spec, params, lr), lambda s: min(1.0, (s + 1) / n) * decay(s))
    if method in ("untuned_linear", "untuned_exponential"):
        import pytorch_warmup as pw

        opt = _torch_opt(spec, params, lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)  # the schedule first, then warm-up
        linear = method == "untuned_linear"
        if spec.optimizer != "rmsprop":
            warm = (pw.UntunedLinearWarmup if linear else pw.UntunedExponentialWarmup)(opt)
        else:  # the untuned classes read group['betas']: KeyError on RMSprop
            period = int((2.0 if linear else 1.0) / (1.0 - spec.beta2))
            warm = (pw.LinearWarmup if linear else pw.ExponentialWarmup)(opt, period)

        def after() -> None:
            with warm.dampening():
                sched.step()

        return Runner(opt, after)
    if method == "radam":
        return scheduled(torch.optim.RAdam(
            params, lr=lr, betas=betas, weight_decay=spec.weight_decay,
            decoupled_weight_decay=spec.optimizer == "adamw"))  # fmt: skip
    if method in ("gi_adam", "gi_rmsprop"):
        opt = _torch_opt(spec, params, lr)
        opt.register_step_pre_hook(_gradient_init_hook)
        return scheduled(opt)
    if method == "schedulefree":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(params, lr=lr, betas=betas, warmup_steps=0,
                                             weight_decay=spec.weight_decay)  # fmt: skip
        return Runner(opt, None, schedule_free=True)
    if method in WARMOPT:
        make, gran = WARMOPT[method]
        kw: dict[str, Any] = {"warmup": make(), "granularity": gran}
        if spec.optimizer == "rmsprop":
            wopt: torch.optim.Optimizer = warmopt.RMSprop(params, lr=lr, alpha=spec.beta2, **kw)
        elif spec.optimizer == "adamw":
            wopt = warmopt.AdamW(params, lr=lr, betas=betas, weight_decay=spec.weight_decay, **kw)
        else:
            wopt = warmopt.Adam(params, lr=lr, betas=betas, **kw)
        return scheduled(wopt)
    raise ValueError(f"unknown method {method!r}")


# --------------------------------------------------------------------------- one run


def run_one(job: tuple[str, str, str, float, int]) -> dict[str, Any]:
    """Train one (task, method, lr, seed); return its summary (and curves for seed 0)."""
    mode, task, method, lr, seed = job
    torch.set_num_threads(1)
    spec = next(s for s in task_specs(mode) if s.name == task)
    prob = get_problem(spec)
    model = prob.make_model(seed)
    params = list(model.parameters())
    loss0 = prob.train_loss(model)
    runner = build_runner(method, spec, params, lr)
    plan = prob.plan(seed, spec.steps)
    traced = method == "warmopt" and seed == 0
    curve: list[float] = []
    scales: list[list[float]] = []
    t0 = time.perf_counter()
    for i in range(spec.steps):
        loss = prob.loss(model, plan, i)
        runner.opt.zero_grad(set_to_none=True)
        loss.backward()
        runner.step()
        curve.append(loss.item())
        if traced:
            scales.append(torch.cat(runner.opt.warmup_scale).tolist())  # type: ignore[attr-defined]
        if not math.isfinite(curve[-1]):
            break
    seconds = time.perf_counter() - t0
    runner.eval_mode()
    final, val = prob.train_loss(model), prob.val_loss(model)
    finite = math.isfinite(final) and math.isfinite(val)
    failed = not finite or final >= loss0
    out: dict[str, Any] = {
        "task": task, "method": method, "lr": lr, "seed": seed, "loss0": loss0,
        "final_loss": final if finite else math.inf, "val_loss": val if finite else math.inf,
        "failed": failed, "stalled": failed or final >= (1 - STALL_MARGIN) * prob.constant_loss(),
        "steps_run": len(curve), "seconds": round(seconds, 2),
    }  # fmt: skip
    if finite:
        out.update(prob.extra(model))
    if seed == 0:
        out["curve"] = curve
    if traced:
        out["scales"] = scales
    return out


# --------------------------------------------------------------------------- analysis


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _two_se(a: list[float], b: list[float]) -> float | None:
    """Two standard errors of the difference of two seed means (None with fewer than 2 seeds)."""
    if len(a) < 2 or len(b) < 2 or not all(map(math.isfinite, a + b)):
        return None
    return 2.0 * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def summarize_task(spec: TaskSpec, runs: list[dict[str, Any]],
                   only: Collection[str] | None = None) -> dict[str, Any]:  # fmt: skip
    methods = methods_for(spec, only)
    lrs = list(spec.lrs)
    loss0 = _mean([r["loss0"] for r in runs if r["seed"] == 0] or [r["loss0"] for r in runs])

    def sel(m: str, lr: float) -> list[dict[str, Any]]:
        return sorted((r for r in runs if r["method"] == m and r["lr"] == lr),
                      key=lambda r: r["seed"])  # fmt: skip

    pick = {}
    if "linear_oracle" in methods:
        for lr in lrs:
            cands = [f"linear_{n}" for n in spec.oracle_lengths]
            pick[lr] = min(cands, key=lambda c: _mean([r["final_loss"] for r in sel(c, lr)]))
    grid: dict[str, dict[float, dict[str, Any]]] = {}
    for m in methods:
        grid[m] = {}
        for lr in lrs:
            rs = sel(pick[lr] if m == "linear_oracle" else m, lr)
            grid[m][lr] = {
                "final_loss": _mean([r["final_loss"] for r in rs]),
                "final_losses": [r["final_loss"] for r in rs],
                "val_loss": _mean([r["val_loss"] for r in rs]),
                "val_losses": [r["val_loss"] for r in rs],
                "val_acc": _mean([r["val_acc"] for r in rs]) if all("val_acc" in r for r in rs)
                else None,
                "failures": sum(r["failed"] for r in rs),
                "stalls": sum(r["stalled"] for r in rs),
                "runs": len(rs),
                "picked": pick.get(lr) if m == "linear_oracle" else None,
            }  # fmt: skip
    summary: dict[str, dict[str, Any]] = {}
    for m in methods:
        cells = grid[m]
        clamped = [min(c["final_loss"], loss0) if math.isfinite(c["final_loss"]) else loss0
                   for c in cells.values()]  # fmt: skip
        vals = [(c["val_loss"], lr) for lr, c in cells.items() if math.isfinite(c["val_loss"])]
        best_val, best_val_lr = min(vals) if vals else (math.inf, None)
        stable = [lr for lr, c in cells.items() if c["stalls"] == 0]
        summary[m] = {
            "sensitivity": _mean(clamped) - min(clamped),
            "best_final_loss": min(clamped),
            "best_lr": lrs[clamped.index(min(clamped))],
            "failures": sum(c["failures"] for c in cells.values()),
            "stalls": sum(c["stalls"] for c in cells.values()),
            "runs": sum(c["runs"] for c in cells.values()),
            "largest_stable_lr": max(stable) if stable else None,
            "best_val_loss": best_val,
            "best_val_losses": cells[best_val_lr]["val_losses"] if best_val_lr else [],
        }
    lowest = min(s["best_final_loss"] for s in summary.values())
    span = max(loss0 - lowest, 1e-12)
    for m, s in summary.items():
        s["normalized_sensitivity"] = s["sensitivity"] / span
        # None where the run has no oracle / no "none" to compare with (a --methods subset)
        s.update(val_vs_oracle=None, val_noise=None, small_lr_vs_none=None, small_lr_noise=None)
        if "linear_oracle" in summary:
            o = summary["linear_oracle"]
            s["val_vs_oracle"] = s["best_val_loss"] - o["best_val_loss"]
            s["val_noise"] = _two_se(s["best_val_losses"], o["best_val_losses"])
        if "none" in summary:
            mine, base = grid[m][lrs[0]]["final_losses"], grid["none"][lrs[0]]["final_losses"]
            s["small_lr_vs_none"] = _mean(mine) - _mean(base)
            s["small_lr_noise"] = _two_se(mine, base)
    constant = get_problem(spec).constant_loss()
    return {"spec": asdict(spec), "loss0": loss0, "constant_loss": constant,
            "grid": {m: {repr(lr): c for lr, c in g.items()} for m, g in grid.items()},
            "summary": summary}  # fmt: skip


def _within(delta: float | None, noise: float | None) -> bool | None:
    """Whether ``delta`` (lower is better) is at most 0 or within two standard errors."""
    if delta is None or not math.isfinite(delta):
        return None if delta is None else False
    return delta <= 0 or (noise is not None and delta <= noise)


def split_targets(tasks: dict[str, dict[str, Any]], method: str = "warmopt") -> dict[str, Any]:
    """``method`` against the untuned anchors over a set of tasks (the issue's targets)."""
    per_task, agg_m, agg_best, fail_m, fail_best, agg_oracle = {}, [], [], 0, 0, []
    for name, t in tasks.items():
        s = t["summary"]
        anchors = [a for a in UNTUNED_ANCHORS if a in s]
        if method not in s or not anchors:
            continue
        best = min(anchors, key=lambda a: s[a]["normalized_sensitivity"])
        med = statistics.median(s[a]["sensitivity"] for a in anchors)
        w = s[method]
        agg_m.append(w["normalized_sensitivity"])
        agg_best.append(s[best]["normalized_sensitivity"])
        if "linear_oracle" in s:
            agg_oracle.append(s["linear_oracle"]["normalized_sensitivity"])
        fail_m += w["failures"]
        fail_best += s[best]["failures"]
        per_task[name] = {
            "best_anchor": best,
            "not_worse_than_median_anchor": w["sensitivity"] <= med + 1e-12,
            "median_anchor_S": med,
            "val_within_noise_of_oracle": _within(w.get("val_vs_oracle"), w.get("val_noise")),
            "small_lr_within_noise_of_none": _within(w.get("small_lr_vs_none"),
                                                      w.get("small_lr_noise")),
            "S_at_most_oracle": "linear_oracle" in s
            and w["sensitivity"] <= s["linear_oracle"]["sensitivity"] + 1e-12,
        }  # fmt: skip
    if not per_task:
        return {}
    a_m, a_b = _mean(agg_m), _mean(agg_best)
    return {
        "method": method,
        "aggregate_S": a_m,
        "aggregate_best_anchor_S": a_b,
        "aggregate_oracle_S": _mean(agg_oracle) if agg_oracle else None,
        "S_10pct_below_best_anchor": a_m <= 0.9 * a_b,
        "failures": fail_m,
        "best_anchor_failures": fail_best,
        "no_more_failures": fail_m <= fail_best,
        "tasks": per_task,
    }


# --------------------------------------------------------------------------- report


def _f(v: Any, d: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{d}f}" if math.isfinite(v) else ("inf" if v > 0 else "nan")
    return str(v)


def _yn(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "**no**")


def _split_lines(title: str, names: list[str], result: dict[str, Any]) -> list[str]:
    tasks = {n: result["tasks"][n] for n in names}
    methods = [m for m in ALL_METHODS if any(m in t["summary"] for t in tasks.values())]
    out = [f"## {title}", "",
           "LR sensitivity S per task (lower = more robust), S normalised by the task's loss "
           "range averaged over the tasks (**agg**), and failed runs over the set:", "",
           "| method | " + " | ".join(names) + " | agg | failed |",
           "|---|" + "---|" * (len(names) + 2)]  # fmt: skip
    for m in methods:
        cells = [_f(tasks[n]["summary"][m]["sensitivity"]) if m in tasks[n]["summary"] else "—"
                 for n in names]  # fmt: skip
        norm = [t["summary"][m]["normalized_sensitivity"] for t in tasks.values()
                if m in t["summary"]]  # fmt: skip
        fails = sum(t["summary"][m]["failures"] for t in tasks.values() if m in t["summary"])
        agg = _f(_mean(norm)) if len(norm) == len(names) else "—"
        out.append(f"| {m} | " + " | ".join(cells) + f" | {agg} | {fails} |")
    g = split_targets(tasks)
    if not g:
        out += ["", "Targets: n/a (warmopt or the untuned anchors did not run)."]
    else:
        out += ["", f"Targets for warmopt: aggregate S {g['aggregate_S']:.3f} vs best untuned "
                f"anchor per task {g['aggregate_best_anchor_S']:.3f} (10 % below: "
                f"{_yn(g['S_10pct_below_best_anchor'])}; hand-tuned oracle "
                f"{_f(g['aggregate_oracle_S'])}); failed runs {g['failures']} vs "
                f"{g['best_anchor_failures']} ({_yn(g['no_more_failures'])}).", "",
                "| task | best anchor | S ≤ median anchor | best val within noise of oracle "
                "| smallest LR within noise of no warm-up | S ≤ oracle |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for n, x in g["tasks"].items():
            out.append(f"| {n} | {x['best_anchor']} | {_yn(x['not_worse_than_median_anchor'])} | "
                       f"{_yn(x['val_within_noise_of_oracle'])} | "
                       f"{_yn(x['small_lr_within_noise_of_none'])} | "
                       f"{_yn(x['S_at_most_oracle'])} |")
    return [*out, ""]


def _task_lines(name: str, t: dict[str, Any]) -> list[str]:
    spec, lrs = t["spec"], t["spec"]["lrs"]
    wd = f", weight decay {spec['weight_decay']}" if spec["weight_decay"] else ""
    out = [f"### {name}: {spec['title']}", "",
           f"{spec['steps']} steps, {spec.get('schedule', 'cosine')} lr, beta2/alpha "
           f"{spec['beta2']}{wd}, L0 = {t['loss0']:.3f}, "
           f"constant predictor {t['constant_loss']:.3f}, oracle lengths "
           f"{spec['oracle_lengths']}. Final training loss (mean over seeds; `*` a seed failed, "
           "`†` a seed stalled), S, best validation loss (Δ vs oracle ± 2 s.e.):", "",
           "| method | " + " | ".join(f"lr={x:g}" for x in lrs) + " | S | best val |",
           "|---|" + "---|" * (len(lrs) + 2)]  # fmt: skip
    for m, s in t["summary"].items():
        cells = []
        for lr in lrs:
            c = t["grid"][m][repr(lr)]
            cells.append(_f(c["final_loss"]) + ("*" if c["failures"] else
                                                 "†" if c["stalls"] else ""))  # fmt: skip
        d = s.get("val_vs_oracle")
        delta = "" if m == "linear_oracle" or d is None else (
            f" ({d:+.3f}" + (f" ± {s['val_noise']:.3f})" if s.get("val_noise") else ")"))
        out.append(f"| {m} | " + " | ".join(cells) +
                   f" | {_f(s['sensitivity'])} | {_f(s['best_val_loss'])}{delta} |")  # fmt: skip
    if "linear_oracle" in t["grid"]:
        picks = [t["grid"]["linear_oracle"][repr(lr)]["picked"] for lr in lrs]
        out += ["", "Oracle's warm-up length per LR: "
                + ", ".join(f"{lr:g}: {p.split('_')[1]}" for lr, p in zip(lrs, picks)) + "."]
    return [*out, ""]


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"# LR-robustness benchmark ({meta['mode']})", "",
             f"torch {meta['torch']}, {meta['machine']}, {meta['cpus']} CPUs, {meta['workers']} "
             f"worker processes x 1 thread, commit {meta['commit']}, {meta['runs']} runs in "
             f"{meta['seconds']:.0f} s; seeds: tuning {meta['seeds']['tuning']}, held-out "
             f"{meta['seeds']['heldout']}, fresh held-out {meta['seeds'].get('fresh', '—')}. "
             "Plots: "
             + ", ".join(f"`{p}`" for p in result.get("plots", [])) + ".", "",
             *[f"Merged: {m['runs']} runs from `{m['file']}` (commit {m['commit']}, started "
               f"{m['started']})." for m in meta.get("merged", [])],
             *([""] if meta.get("merged") else []),
             "S = LR sensitivity, mean over the grid of min(L, L0) minus the best L (L = final "
             "training loss, mean over seeds). Untuned anchors: " + ", ".join(UNTUNED_ANCHORS)
             + ". Targets (from the held-out set): aggregate S at least 10 % below the best "
             "untuned anchor picked per task, no more failed runs than that anchor, on no task "
             "worse than the median untuned anchor, best validation loss within noise of the "
             "hand-tuned oracle, at the smallest LR within noise of no warm-up.", ""]  # fmt: skip
    for split, title in (("fresh", "Fresh held-out tasks (fixed before their first run, after "
                                   "the default changed)"),
                         ("heldout", "Held-out tasks (never used to choose a constant; seen "
                                     "before the default changed)"),
                         ("tuning", "Tuning tasks (the policy's constants were chosen here)")):
        names = [n for n, t in result["tasks"].items() if t["spec"]["split"] == split]
        if names:
            lines += _split_lines(title, names, result)
    lines += ["## Per task", ""]
    for name, t in result["tasks"].items():
        lines += _task_lines(name, t)
    lines += ["Notes: " + " ".join(result["notes"])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots

STYLE = {"none": ("k", ":"), "linear_oracle": ("tab:gray", "-"),
         "untuned_linear": ("tab:blue", "--"), "untuned_exponential": ("tab:cyan", "--"),
         "radam": ("tab:green", "--"), "gi_adam": ("tab:olive", "-."),
         "gi_rmsprop": ("tab:olive", "-."), "schedulefree": ("tab:brown", "-."),
         "warmopt": ("tab:red", "-")}  # fmt: skip


def make_plots(runs: list[dict[str, Any]], result: dict[str, Any], out: Path, suffix: str,
               scale_task: str) -> list[str]:  # fmt: skip
    """Final loss vs LR per task, warmopt's scale over steps on ``scale_task``, loss curves."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return []
    names = list(result["tasks"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    files = []

    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        t = result["tasks"][name]
        lrs, loss0 = t["spec"]["lrs"], t["loss0"]
        for m in (m for m in PLOTTED if m in t["grid"]):
            cells = [t["grid"][m][repr(lr)] for lr in lrs]
            ys = [min(c["final_loss"], loss0) if math.isfinite(c["final_loss"]) else loss0
                  for c in cells]  # fmt: skip
            lo = [min([min(v, loss0) if math.isfinite(v) else loss0 for v in c["final_losses"]])
                  for c in cells]  # fmt: skip
            hi = [max([min(v, loss0) if math.isfinite(v) else loss0 for v in c["final_losses"]])
                  for c in cells]  # fmt: skip
            color, ls = STYLE[m]
            ax.plot(lrs, ys, ls, color=color, marker="o", ms=3, lw=2.2 if m == "warmopt" else 1.1,
                    label=m)  # fmt: skip
            ax.fill_between(lrs, lo, hi, color=color, alpha=0.12)
            bad = [(lr, y) for lr, y, c in zip(lrs, ys, cells) if c["stalls"]]
            if bad:
                ax.plot(*zip(*bad), "x", color=color, ms=7)
        ax.axhline(loss0, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name} ({t['spec']['split']})", fontsize=9)
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final training loss")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    h, lab = axes.flat[0].get_legend_handles_labels()
    if lab:  # none when only ablations ran (they are in the tables only)
        fig.legend(h, lab, loc="lower center", ncol=len(lab), fontsize=8)
    fig.suptitle("Final training loss vs learning rate (mean over seeds, band = seed range, "
                 "x = a seed stalled)", fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    files.append(f"quality_lr{suffix}.png")
    fig.savefig(out / files[-1], dpi=90)
    plt.close(fig)

    traced = sorted((r for r in runs if r["task"] == scale_task and "scales" in r),
                    key=lambda r: r["lr"])  # fmt: skip
    if traced:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        cmap = plt.get_cmap("viridis")
        for k, r in enumerate(traced):
            med = [statistics.median(row) for row in r["scales"]]
            lo = [min(row) for row in r["scales"]]
            hi = [max(row) for row in r["scales"]]
            xs = range(1, len(med) + 1)
            c = cmap(k / max(1, len(traced) - 1))
            ax.plot(xs, med, color=c, lw=1.8, label=f"lr={r['lr']:g}")
            ax.fill_between(xs, lo, hi, color=c, alpha=0.15)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("warm-up scale (median over tensors, band = min–max)")
        ax.set_title(f"warmopt's scale on {scale_task}, seed 0: a longer warm-up at a larger lr",
                     fontsize=9)  # fmt: skip
        ax.legend(fontsize=8)
        fig.tight_layout()
        files.append(f"quality_scale{suffix}.png")
        fig.savefig(out / files[-1], dpi=100)
        plt.close(fig)

    drawn = {r["task"] for r in runs if "curve" in r
             and (r["method"] in PLOTTED or r["method"].startswith("linear_"))}  # fmt: skip
    if not drawn >= set(names):
        # a plotted method did not run now on every task (an ablation, or some tasks, merged
        # in): the curves are not stored, so keep the curves plot of the run that made them
        return files
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        t = result["tasks"][name]
        lr = max(t["spec"]["lrs"])
        pick = t["grid"].get("linear_oracle", {}).get(repr(lr), {}).get("picked")
        for m in (m for m in PLOTTED if m in t["grid"]):
            key = pick if m == "linear_oracle" else m
            sel = [r for r in runs if r["task"] == name and r["method"] == key and r["lr"] == lr
                   and "curve" in r]  # fmt: skip
            if sel:
                c = [min(v, 10 * t["loss0"]) if math.isfinite(v) else 10 * t["loss0"]
                     for v in sel[0]["curve"]]  # fmt: skip
                color, ls = STYLE[m]
                ax.plot(range(1, len(c) + 1), c, ls, color=color,
                        lw=1.8 if m == "warmopt" else 0.9, label=m)  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylim(top=10 * t["loss0"])
        ax.set_title(f"{name}, lr={lr:g}, seed 0", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss of the step's batch (clipped at 10 L0)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    h, lab = axes.flat[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=len(lab), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    files.append(f"quality_curves{suffix}.png")
    fig.savefig(out / files[-1], dpi=90)
    plt.close(fig)
    return files


# --------------------------------------------------------------------------- main


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"warmopt": warmopt.__version__}
    for name in ("pytorch-warmup", "schedulefree", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _ran(runs: list[dict[str, Any]]) -> set[str]:
    """The methods ``runs`` cover (the hand-tuned oracle where its candidate lengths ran)."""
    names = {r["method"] for r in runs}
    return names | ({"linear_oracle"} if any(n.startswith("linear_") for n in names) else set())


def _merged(ap: argparse.ArgumentParser, files: list[Path], mode: str, specs: list[TaskSpec],
            only: Collection[str] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The runs of earlier results files that this run does not redo, and where they came from."""
    redone = {(s.name, m) for s in specs for m in runnable_for(s, only)}
    runs: list[dict[str, Any]] = []
    origin = []
    for path in files:
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            ap.error(f"--merge: cannot read {path}: {e}")
        if old.get("meta", {}).get("mode") != mode:
            ap.error(f"--merge: {path} is a {old.get('meta', {}).get('mode')!r} run, not {mode!r}")
        seen = {(r["task"], r["method"], r["lr"], r["seed"]) for r in runs}
        kept = [r for r in old["runs"] if (r["task"], r["method"]) not in redone
                and (r["task"], r["method"], r["lr"], r["seed"]) not in seen]  # fmt: skip
        runs += kept
        origin.append({"file": path.name, "commit": old["meta"].get("commit"),
                       "started": old["meta"].get("started"), "runs": len(kept)})  # fmt: skip
    return runs, origin


def main(argv: list[str] | None = None) -> dict[str, Any]:
    git_commit()  # stamp the results with the code as it is when the run starts
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="one seed, half the steps")
    g.add_argument("--tiny", action="store_true", help="a few steps: checks the script runs")
    ap.add_argument("--split", choices=("all", "tuning", "heldout", "fresh"), default="all")
    ap.add_argument("--tasks", nargs="*", default=None, help="run only these tasks")
    ap.add_argument("--methods", nargs="*", default=None, metavar="METHOD",
                    help="run only these methods (default: all)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=2, help="worker processes, 1 thread each")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--merge", type=Path, action="append", default=[], metavar="FILE",
                    help="add the runs of an earlier results file (.json) of the same mode")
    args = ap.parse_args(argv)
    if args.methods is not None:
        unknown = [m for m in args.methods if m not in ALL_METHODS]
        if unknown or not args.methods:
            what = f"unknown method(s) {', '.join(map(repr, unknown))}" if unknown else "no method"
            ap.error(f"--methods: {what}; choose from {', '.join(ALL_METHODS)}")
    only = args.methods
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    seeds = {"tuning": [0, 1], "heldout": [0, 1, 2], "fresh": [0, 1, 2]} if mode == "full" \
        else {"tuning": [0], "heldout": [0], "fresh": [0]}  # fmt: skip
    specs = [s for s in task_specs(mode) if (args.split in ("all", s.split))
             and (args.tasks is None or s.name in args.tasks) and methods_for(s, only)]
    if not specs:
        ap.error("no task selected")
    merged_runs, merged_from = _merged(ap, args.merge, mode, specs, only)
    cost = {"code_tf_b95": 0, "code_tf_b999": 1, "lm_post_ln": 2, "lm_pre_ln": 3}
    jobs = [(mode, s.name, m, lr, seed)
            for s in sorted(specs, key=lambda s: cost.get(s.name, 9))
            for lr in reversed(s.lrs) for seed in seeds[s.split] for m in runnable_for(s, only)]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover

        def tqdm(x: Any, **_: Any) -> Any:  # type: ignore[no-redef]
            return x

    torch.set_num_threads(1)
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    if args.workers <= 1:
        runs = [run_one(j) for j in tqdm(jobs, desc="quality", unit="run")]
    else:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            runs = list(tqdm(pool.imap_unordered(run_one, jobs), total=len(jobs), desc="quality",
                             unit="run"))  # fmt: skip
    elapsed = time.perf_counter() - t0
    runs += merged_runs
    named = {s.name: s for s in task_specs(mode)}
    specs = [named[n] for n in named if any(r["task"] == n for r in runs)]
    result: dict[str, Any] = {"tasks": {}, "notes": [
        "pytorch_warmup's untuned classes raise KeyError on RMSprop (they read group['betas']); "
        "the RMSprop tasks use LinearWarmup / ExponentialWarmup with the same rules on alpha.",
        "Schedule-free AdamW runs at constant LR (it replaces the schedule); every other "
        "method has the shared cosine decay, except on the tasks whose schedule is "
        "constant."]}  # fmt: skip
    for spec in specs:
        mine = [r for r in runs if r["task"] == spec.name]
        result["tasks"][spec.name] = summarize_task(spec, mine, _ran(mine) if merged_from else only)
    result["meta"] = {
        "mode": mode, "split": args.split, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.platform(),
        "cpus": os.cpu_count(), "workers": args.workers, "commit": git_commit(), "seeds": seeds,
        "methods": only, "runs": len(runs) - len(merged_runs), "started": started,
        "seconds": round(elapsed, 1), "merged": merged_from,
        "versions": _versions(),
    }  # fmt: skip
    result["targets"] = {
        split: split_targets({n: t for n, t in result["tasks"].items()
                              if t["spec"]["split"] == split})
        for split in ("tuning", "heldout", "fresh")}  # fmt: skip
    suffix = {"full": "", "quick": "_quick", "tiny": "_tiny"}[mode]
    args.out.mkdir(parents=True, exist_ok=True)
    scale_task = "lm_post_ln" if "lm_post_ln" in result["tasks"] else next(iter(result["tasks"]))
    result["plots"] = make_plots(runs, result, args.out, suffix, scale_task)
    result["runs"] = [{k: v for k, v in r.items() if k not in ("curve", "scales")} for r in runs]
    text = markdown(result)
    stem = f"quality{suffix}"
    (args.out / f"{stem}.json").write_text(json.dumps(finite(result), indent=1, allow_nan=False))
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    merged = f" (and {len(merged_runs)} merged)" if merged_runs else ""
    print(f"{len(runs) - len(merged_runs)} runs in {elapsed:.0f} s{merged}; results in "
          f"{args.out}/{stem}.*")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
