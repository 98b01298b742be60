"""LR-robustness benchmark (issue 5): warmopt beside the usual warm-ups on five real tasks.

Tasks (``benchmarks/quality_tasks.py``; all data ships offline):

* ``digits_ce``    scikit-learn digits, 3-layer ReLU MLP without normalisation, cross-entropy,
                   mini-batches of 64
* ``digits_mse``   the same MLP, MSE on one-hot targets, full batch (known to need warm-up)
* ``lm_post_ln``   char-level LM on Python's ``pydoc_data.topics`` text, post-LN Transformer
                   (~0.1M parameters)
* ``lm_pre_ln``    the same LM as a pre-LN Transformer with final LayerNorm (the control)
* ``gru_rmsprop``  a GRU char model on the same text trained with RMSprop

Every run uses a cosine learning rate: the base LR decays to 0 over the run with
``0.5 (1 + cos(pi s / steps))`` (a ``torch.optim.lr_scheduler.LambdaLR``), and each warm-up
method multiplies into that, as it would in practice. Schedule-free AdamW replaces the schedule by
design and runs at constant LR. For a given seed every method starts from the same weights and
sees the same batches in the same order.

Methods (Adam tasks; RMSprop tasks drop ``radam`` and ``schedulefree`` and use ``gi_rmsprop``):

* ``none``                 torch.optim.Adam / RMSprop, no warm-up
* ``linear_oracle``        linear warm-up of ``steps/20``, ``steps/5`` or ``steps/2`` steps, the
                           best of the three per LR on the final training loss (hand-tuned,
                           picked after the fact)
* ``untuned_linear``       ``pytorch_warmup.UntunedLinearWarmup`` (2/(1-beta2) steps). On RMSprop
                           pytorch_warmup's untuned classes raise ``KeyError: 'betas'`` (they
                           read ``group['betas']``), so ``pytorch_warmup.LinearWarmup`` with the
                           same rule on RMSprop's ``alpha``, 2/(1-alpha) steps, is used there
* ``untuned_exponential``  ``pytorch_warmup.UntunedExponentialWarmup`` (tau = 1/(1-beta2));
                           RMSprop: ``pytorch_warmup.ExponentialWarmup`` with tau = 1/(1-alpha)
* ``radam``                torch.optim.RAdam
* ``gi_adam``              GI-Adam (Kalra & Barkeshli 2024): torch.optim.Adam whose
                           ``exp_avg_sq`` is set to ``g_0**2`` (the first gradient, from the first
                           batch) by a step pre-hook right before the first step, with
                           ``step = 0`` and ``exp_avg = 0``; torch's bias correction is kept, so
                           step t is Adam's with ``v_t = beta2**t g_0**2 + (1-beta2) sum_i
                           beta2**(t-i) g_i**2`` divided by ``1 - beta2**t`` -- for stationary
                           gradients an implicit warm-up ``sqrt(1 - beta2**t)``
* ``gi_rmsprop``           the same initialisation of RMSprop's ``square_avg`` (no bias
                           correction in RMSprop, so its first step is ``lr sign(g_0)`` instead of
                           ~10x that)
* ``schedulefree``         ``schedulefree.AdamWScheduleFree(warmup_steps=0, weight_decay=0)``,
                           with ``optimizer.train()`` before training and ``optimizer.eval()``
                           before evaluating (the averaged weights are evaluated)
* ``warmopt``              ``warmopt.Adam`` / ``warmopt.RMSprop``, default measured warm-up
* ``warmopt_nostats``      ``warmup=warmopt.Measured(kurtosis=False, drift=False)`` (RAdam-like)
* ``warmopt_nodrift``      ``warmup=warmopt.Measured(drift=False)``
* ``warmopt_prior2``       ``warmup=warmopt.Measured(prior_kurtosis=2)`` (a Gaussian prior: larger
                           first steps)
* ``warmopt_sample256``    ``warmup=warmopt.Measured(sample=256)``: the fresh-ratio statistics of
                           each tensor measured on a window of 256 coordinates that moves from
                           measurement to measurement, instead of one of 4096 (the default, which
                           already samples most weight matrices here: the MLPs' 128-wide layers,
                           the LMs' qkv/fc/embedding/head matrices, the GRU's weights), so
                           nearly every weight matrix is sampled, on a 16x smaller window
* ``warmopt_every4``       ``warmup=warmopt.Measured(measure_every=4)``: each tensor's statistics
                           on one step in four, staggered across tensors (the cheaper warming
                           step of ``benchmarks.step_cost``'s ``sampled`` variant)
* ``warmopt_group``        ``granularity="group"`` (one param group here: one scale for the model)

Metrics per task and method (L = final training loss on fixed training data, L_0 at init):

* LR sensitivity S = mean over the grid of min(L, L_0) - min over the grid of L (Wortsman et al.
  2023), L the mean over seeds at each LR
* failure rate: share of runs with a non-finite final loss or L >= L_0
* stall rate: failed, or L within 2 % of the loss of the best constant predictor (label/unigram
  entropy, or 1 - sum p_c^2 for MSE): the network learned nothing beyond the marginals
* largest stable LR: the largest LR of the grid at which no seed failed or stalled
* best validation loss over the grid, and its difference to the hand-tuned oracle's
* warm-up cost: mean training (batch) loss over the first 20 % of steps at the method's best LR
* measured warm-up length of warmopt per parameter tensor (steps until its scale reaches 0.5,
  0.9, 1.0), beside the closed forms of RAdam, untuned linear/exponential and GI-Adam

Usage::

    python -m benchmarks.quality           # full run, ~20 min on 2 shared cores (2 processes)
    python -m benchmarks.quality --quick   # one seed, half the steps: a few minutes
    python -m benchmarks.quality --tiny    # seconds: the smoke test
    python -m benchmarks.quality --methods warmopt warmopt_sample256 --out DIR  # an ablation pair

``--methods`` runs only the named methods (``linear_oracle`` stands for its three lengths); what
needs a method that did not run (the targets against the untuned anchors, the comparison with the
oracle) is then reported as n/a.

Writes ``benchmarks/results/quality{,_quick,_tiny}.json`` and ``.md`` and the plots
``quality_lr*.png`` (final loss vs LR), ``quality_curves*.png`` (loss curves at a high LR) and
``quality_warmup*.png`` (warm-up scale over steps), with the same ``_quick``/``_tiny`` suffix;
``--out DIR`` writes them in DIR instead.
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
from benchmarks._common import git_commit

from .quality_tasks import TaskSpec, get_problem, task_specs

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLDS = (0.5, 0.9, 1.0)
EARLY_FRACTION = 0.2
STALL_MARGIN = 0.02

ADAM_METHODS = [
    "none",
    "linear_oracle",
    "untuned_linear",
    "untuned_exponential",
    "radam",
    "gi_adam",
    "schedulefree",
    "warmopt",
    "warmopt_nostats",
    "warmopt_nodrift",
    "warmopt_prior2",
    "warmopt_sample256",
    "warmopt_every4",
    "warmopt_group",
]
RMSPROP_METHODS = [
    "none",
    "linear_oracle",
    "untuned_linear",
    "untuned_exponential",
    "gi_rmsprop",
    "warmopt",
    "warmopt_nostats",
    "warmopt_nodrift",
    "warmopt_prior2",
    "warmopt_sample256",
    "warmopt_every4",
    "warmopt_group",
]
#: Methods that need no warm-up length: the "untuned anchors" the targets compare against.
UNTUNED_ANCHORS = ("untuned_linear", "untuned_exponential", "radam")
WARMOPT_POLICIES: dict[str, tuple[Any, str]] = {
    "warmopt": ("measured", "tensor"),
    "warmopt_nostats": (warmopt.Measured(kurtosis=False, drift=False), "tensor"),
    "warmopt_nodrift": (warmopt.Measured(drift=False), "tensor"),
    "warmopt_prior2": (warmopt.Measured(prior_kurtosis=2.0), "tensor"),
    "warmopt_sample256": (warmopt.Measured(sample=256), "tensor"),
    "warmopt_every4": (warmopt.Measured(measure_every=4), "tensor"),
    "warmopt_group": ("measured", "group"),
}


def methods_for(spec: TaskSpec, only: Collection[str] | None = None) -> list[str]:
    """The methods of ``spec``'s optimizer, in table order; ``only`` keeps just those named."""
    methods = RMSPROP_METHODS if spec.optimizer == "rmsprop" else ADAM_METHODS
    return [m for m in methods if only is None or m in only]


def runnable_for(spec: TaskSpec, only: Collection[str] | None = None) -> list[str]:
    out = []
    for m in methods_for(spec, only):
        out += [f"linear_{n}" for n in spec.oracle_lengths] if m == "linear_oracle" else [m]
    return out


# --------------------------------------------------------------------------- optimizers


class Runner:
    """An optimizer plus what runs after each step (schedulers, warm-up dampening)."""

    def __init__(
        self,
        opt: torch.optim.Optimizer,
        after_step: Callable[[], None] | None = None,
        schedule_free: bool = False,
    ) -> None:
        self.opt, self.after_step, self.schedule_free = opt, after_step, schedule_free
        if schedule_free:
            opt.train()  # type: ignore[attr-defined]

    def step(self) -> None:
        self.opt.step()
        if self.after_step is not None:
            self.after_step()

    def eval_mode(self) -> None:
        if self.schedule_free:
            self.opt.eval()  # type: ignore[attr-defined]


def _base(spec: TaskSpec, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, spec.beta2))
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=(0.9, spec.beta2), weight_decay=spec.weight_decay
        )
    return torch.optim.RMSprop(params, lr=lr, alpha=spec.beta2)


def _gradient_init_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """GI-Adam / GI-RMSprop: before the very first step, second moment := g_0^2 (step 0, m = 0).

    torch's ``_init_group`` creates state only where it is empty, so the state written here is
    the one the first step updates: ``v_1 = beta2 g_0^2 + (1 - beta2) g_0^2 = g_0^2``.
    """
    from torch.optim.optimizer import _get_scalar_dtype

    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is None or len(opt.state[p]) > 0:
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
        return 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))

    def scheduled(opt: torch.optim.Optimizer, factor: Callable[[int], float] = decay) -> Runner:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return Runner(opt, sched.step)

    if method == "none":
        return scheduled(_base(spec, params, lr))
    if method.startswith("linear_"):
        length = int(method.split("_")[1])
        return scheduled(_base(spec, params, lr), lambda s: min(1.0, (s + 1) / length) * decay(s))
    if method in ("untuned_linear", "untuned_exponential"):
        import pytorch_warmup

        opt = _base(spec, params, lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, decay
        )  # the schedule first, then the warm-up
        warm: Any
        if spec.optimizer != "rmsprop":
            cls = (
                pytorch_warmup.UntunedLinearWarmup
                if method == "untuned_linear"
                else pytorch_warmup.UntunedExponentialWarmup
            )
            warm = cls(opt)
        elif (
            method == "untuned_linear"
        ):  # the untuned classes read group['betas']: KeyError on RMSprop
            warm = pytorch_warmup.LinearWarmup(opt, warmup_period=int(2.0 / (1.0 - spec.beta2)))
        else:
            warm = pytorch_warmup.ExponentialWarmup(
                opt, warmup_period=int(1.0 / (1.0 - spec.beta2))
            )

        def after() -> None:
            with warm.dampening():
                sched.step()

        return Runner(opt, after)
    if method == "radam":
        return scheduled(
            torch.optim.RAdam(
                params,
                lr=lr,
                betas=(0.9, spec.beta2),
                weight_decay=spec.weight_decay,
                decoupled_weight_decay=spec.optimizer == "adamw",
            )
        )
    if method in ("gi_adam", "gi_rmsprop"):
        opt = _base(spec, params, lr)
        opt.register_step_pre_hook(_gradient_init_hook)
        return scheduled(opt)
    if method == "schedulefree":
        import schedulefree

        opt = schedulefree.AdamWScheduleFree(
            params, lr=lr, betas=(0.9, spec.beta2), weight_decay=spec.weight_decay, warmup_steps=0
        )
        return Runner(opt, None, schedule_free=True)
    if method in WARMOPT_POLICIES:
        policy, granularity = WARMOPT_POLICIES[method]
        if spec.optimizer == "adam":
            wopt: torch.optim.Optimizer = warmopt.Adam(
                params, lr=lr, betas=(0.9, spec.beta2), warmup=policy, granularity=granularity
            )
        elif spec.optimizer == "adamw":
            wopt = warmopt.AdamW(
                params,
                lr=lr,
                betas=(0.9, spec.beta2),
                weight_decay=spec.weight_decay,
                warmup=policy,
                granularity=granularity,
            )
        else:
            wopt = warmopt.RMSprop(
                params, lr=lr, alpha=spec.beta2, warmup=policy, granularity=granularity
            )
        return scheduled(wopt)
    raise ValueError(f"unknown method {method!r}")


def pytorch_warmup_rejects_rmsprop() -> str:
    """Check (and return the error) that pytorch_warmup's untuned classes fail on RMSprop."""
    import pytorch_warmup

    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    try:
        pytorch_warmup.UntunedLinearWarmup(opt)
    except KeyError as err:
        return f"KeyError: {err}"
    return "no error"


# --------------------------------------------------------------------------- one run


def _first_reach(trace: list[float], level: float) -> int | None:
    for i, s in enumerate(trace):
        if s >= level - (1e-6 if level == 1.0 else 0.0):
            return i + 1
    return None


def run_one(job: tuple[str, str, str, float, int]) -> dict[str, Any]:
    """Train one (task, method, lr, seed) and return its summary (and curves for seed 0)."""
    mode, task, method, lr, seed = job
    torch.set_num_threads(1)
    spec = next(s for s in task_specs(mode) if s.name == task)
    prob = get_problem(spec)
    model = prob.make_model(seed)
    named = list(model.named_parameters())
    params = [p for _, p in named]
    loss0 = prob.train_loss(model)
    runner = build_runner(method, spec, params, lr)
    plan = prob.plan(seed, spec.steps)
    track = method in WARMOPT_POLICIES
    conf: list[list[float]] = []
    curve: list[float] = []
    t0 = time.perf_counter()
    for i in range(spec.steps):
        loss = prob.loss(model, plan, i)
        runner.opt.zero_grad(set_to_none=True)
        loss.backward()
        runner.step()
        curve.append(loss.item())
        if not math.isfinite(curve[-1]):
            break
        if track and (not conf or min(conf[-1]) < 1.0):
            # The confidence s_t of each tensor: the applied scale on Adam; on RMSprop the scale
            # also carries sqrt(1 - alpha^t) (bias correction), so s_t is the comparable number.
            st = runner.opt.state
            conf.append(torch.stack([st[p]["warmup_confidence"] for p in params]).tolist())
    seconds = time.perf_counter() - t0
    runner.eval_mode()
    final = prob.train_loss(model)
    val = prob.val_loss(model)
    finite = math.isfinite(final) and math.isfinite(val)
    const = prob.constant_loss()
    early = curve[: max(1, int(EARLY_FRACTION * spec.steps))]
    failed = (not finite) or final >= loss0
    out: dict[str, Any] = {
        "task": task,
        "method": method,
        "lr": lr,
        "seed": seed,
        "loss0": loss0,
        "final_loss": final if finite else float("inf"),
        "val_loss": val if finite else float("inf"),
        "failed": failed,
        "stalled": failed or final >= (1.0 - STALL_MARGIN) * const,
        "early_loss": sum(early) / len(early) if all(map(math.isfinite, early)) else float("inf"),
        "steps_run": len(curve),
        "seconds": round(seconds, 2),
    }
    if finite:
        out.update(prob.extra(model))
    if track:
        kinds = prob.kinds(model)
        out["warm_steps"] = {
            name: [_first_reach([c[j] for c in conf], lvl) for lvl in THRESHOLDS]
            for j, (name, _) in enumerate(named)
        }
        out["kinds"] = {name: kinds[name] for name, _ in named}
        out["numel"] = {name: p.numel() for name, p in named}
    if seed == 0:
        out["curve"] = curve
        if method == "warmopt":
            out["conf_trace"] = conf
    return out


# --------------------------------------------------------------------------- analysis


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _closed_form_steps(fn: Callable[[int], float], limit: int = 200_000) -> list[int | None]:
    out: list[int | None] = []
    for lvl in THRESHOLDS:
        t = next((t for t in range(1, limit) if fn(t) >= lvl - (1e-6 if lvl == 1.0 else 0.0)), None)
        out.append(t)
    return out


def anchor_scales(spec: TaskSpec) -> dict[str, Callable[[int], float]]:
    """Closed-form scale of the anchors at optimizer step t (1-based), as the runs apply them."""
    b = spec.beta2
    lin_period, exp_period = int(2.0 / (1.0 - b)), int(1.0 / (1.0 - b))

    def radam(t: int) -> float:
        rho_inf = 2 / (1 - b) - 1
        rho_t = rho_inf - 2 * t * b**t / (1 - b**t)
        if rho_t <= 5:
            return 0.0
        return math.sqrt(
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )

    out: dict[str, Callable[[int], float]] = {
        "untuned_linear": lambda t: min(1.0, t / lin_period),
        "untuned_exponential": lambda t: 1.0 - math.exp(-t / exp_period),
        ("gi_rmsprop" if spec.optimizer == "rmsprop" else "gi_adam"): lambda t: math.sqrt(1 - b**t),
    }
    if spec.optimizer != "rmsprop":
        out["radam"] = radam
    return out


def summarize_task(
    spec: TaskSpec,
    runs: list[dict[str, Any]],
    seeds: list[int],
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    methods = methods_for(spec, only)
    lrs = list(spec.lrs)
    # Every method starts from the same weights per seed: L0 from any method's runs.
    base = "none" if "none" in methods else methods[0]
    if base == "linear_oracle":
        base = f"linear_{spec.oracle_lengths[0]}"
    loss0 = _mean([r["loss0"] for r in runs if r["method"] == base])
    const = get_problem(spec).constant_loss()

    def sel(m: str, lr: float) -> list[dict[str, Any]]:
        return [r for r in runs if r["method"] == m and r["lr"] == lr]

    oracle_pick: dict[float, str] = {}
    for lr in lrs if "linear_oracle" in methods else []:
        cands = [f"linear_{n}" for n in spec.oracle_lengths]
        oracle_pick[lr] = min(cands, key=lambda c: _mean([r["final_loss"] for r in sel(c, lr)]))

    grid: dict[str, dict[float, dict[str, Any]]] = {}
    for m in methods:
        grid[m] = {}
        for lr in lrs:
            rs = sel(oracle_pick[lr] if m == "linear_oracle" else m, lr)
            finals = [r["final_loss"] for r in rs]
            vals = [r["val_loss"] for r in rs]
            grid[m][lr] = {
                "final_loss": _mean(finals),
                "val_loss": _mean(vals),
                "val_losses": vals,
                "failures": sum(r["failed"] for r in rs),
                "stalls": sum(r["stalled"] for r in rs),
                "runs": len(rs),
                "early_loss": _mean([r["early_loss"] for r in rs]),
                "val_acc": _mean([r["val_acc"] for r in rs])
                if all("val_acc" in r for r in rs)
                else None,
                "picked": oracle_pick[lr] if m == "linear_oracle" else None,
            }

    summary: dict[str, dict[str, Any]] = {}
    for m in methods:
        cells = grid[m]
        finals = [cells[lr]["final_loss"] for lr in lrs]
        clamped = [min(v, loss0) if math.isfinite(v) else loss0 for v in finals]
        best_final = min(clamped)
        best_lr = lrs[clamped.index(best_final)]
        n_runs = sum(cells[lr]["runs"] for lr in lrs)
        stable = [lr for lr in lrs if cells[lr]["stalls"] == 0]
        finite_vals = [
            (cells[lr]["val_loss"], lr) for lr in lrs if math.isfinite(cells[lr]["val_loss"])
        ]
        best_val, best_val_lr = min(finite_vals) if finite_vals else (float("inf"), None)
        summary[m] = {
            "sensitivity": _mean(clamped) - best_final,
            "failure_rate": sum(cells[lr]["failures"] for lr in lrs) / n_runs,
            "stall_rate": sum(cells[lr]["stalls"] for lr in lrs) / n_runs,
            "largest_stable_lr": max(stable) if stable else None,
            "best_lr": best_lr,
            "best_final_loss": best_final,
            "best_val_loss": best_val,
            "best_val_lr": best_val_lr,
            "best_val_losses": cells[best_val_lr]["val_losses"] if best_val_lr is not None else [],
            "warmup_cost": cells[best_lr]["early_loss"],
        }
    oracle = summary.get("linear_oracle")
    for m in methods:
        s = summary[m]
        s["val_vs_oracle"] = (
            None if oracle is None else s["best_val_loss"] - oracle["best_val_loss"]
        )
        s["val_noise"] = (
            None if oracle is None else _noise(s["best_val_losses"], oracle["best_val_losses"])
        )

    warm = _warmup_lengths(spec, runs)
    targets = _targets(spec, summary, warm)
    return {
        "spec": asdict(spec),
        "loss0": loss0,
        "constant_loss": const,
        "seeds": seeds,
        "grid": {m: {repr(lr): c for lr, c in grid[m].items()} for m in methods},
        "summary": summary,
        "warmup_lengths": warm,
        "targets": targets,
    }


def _noise(a: list[float], b: list[float]) -> float | None:
    """Two standard errors of the difference of two seed means (None with one seed)."""
    if len(a) < 2 or len(b) < 2 or not all(map(math.isfinite, a + b)):
        return None
    return 2.0 * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def _warmup_lengths(spec: TaskSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """warmopt's measured steps to 0.5/0.9/1.0 per tensor, and the anchors' closed forms."""
    mine = [r for r in runs if r["method"] == "warmopt" and "warm_steps" in r]
    out: dict[str, Any] = {"tensors": [], "anchors": {}, "by_kind": {}, "steps": spec.steps}
    if not mine:
        return out
    names = list(mine[0]["warm_steps"])
    for name in names:
        per_level = []
        for k in range(len(THRESHOLDS)):
            vals = [r["warm_steps"][name][k] for r in mine]
            reached = [v for v in vals if v is not None]
            per_level.append(
                {
                    "median": statistics.median(reached) if len(reached) * 2 > len(vals) else None,
                    "min": min(reached) if reached else None,
                    "max": max(reached) if len(reached) == len(vals) else None,
                    "not_reached": len(vals) - len(reached),
                }
            )
        out["tensors"].append(
            {
                "name": name,
                "kind": mine[0]["kinds"][name],
                "numel": mine[0]["numel"][name],
                "levels": per_level,
            }
        )
    for name, fn in anchor_scales(spec).items():
        out["anchors"][name] = _closed_form_steps(fn)
    # Embedding-like vs dense: per run, mean steps to 0.9 of each kind (unreached = steps + 1).
    kinds = sorted({t["kind"] for t in out["tensors"]})
    for kind in kinds:
        per_run = []
        for r in mine:
            vals = [
                v[1] if v[1] is not None else spec.steps + 1
                for n, v in r["warm_steps"].items()
                if r["kinds"][n] == kind
            ]
            per_run.append(_mean(vals))
        out["by_kind"][kind] = {
            "median_steps_to_0.9": statistics.median(per_run),
            "runs": len(per_run),
        }
    sparse = [k for k in ("embedding", "input") if k in kinds]
    if sparse and "matrix" in kinds:
        longer = 0
        for r in mine:

            def kmean(kind: str, r: dict[str, Any] = r) -> float:
                return _mean(
                    [
                        v[1] if v[1] is not None else spec.steps + 1
                        for n, v in r["warm_steps"].items()
                        if r["kinds"][n] == kind
                    ]
                )

            longer += kmean(sparse[0]) > kmean("matrix")
        out["embedding_longer_than_matrix"] = {
            "kind": sparse[0],
            "runs": len(mine),
            "longer": longer,
        }
    return out


#: What the targets compare: warmopt against the anchors, the oracle and untuned linear.
TARGET_NEEDS = ("warmopt", "linear_oracle", "untuned_linear")


def _targets(
    spec: TaskSpec, summary: dict[str, dict[str, Any]], warm: dict[str, Any]
) -> dict[str, Any] | None:
    """warmopt against the untuned anchors; None when a method it needs did not run."""
    anchors = [m for m in UNTUNED_ANCHORS if m in summary]
    if not anchors or any(m not in summary for m in TARGET_NEEDS):
        return None
    w = summary["warmopt"]
    best_s = min(summary[m]["sensitivity"] for m in anchors)
    best_f = min(summary[m]["failure_rate"] for m in anchors)
    noise = w["val_noise"]
    delta = w["val_vs_oracle"]
    best_stall = min(summary[m]["stall_rate"] for m in anchors)
    return {
        "anchors": anchors,
        "stall_rate": {
            "warmopt": w["stall_rate"],
            "best_anchor": best_stall,
            "met": w["stall_rate"] <= best_stall + 1e-12,
        },
        "sensitivity": {
            "warmopt": w["sensitivity"],
            "best_anchor": best_s,
            "best_anchor_method": min(anchors, key=lambda m: summary[m]["sensitivity"]),
            "met": w["sensitivity"] <= best_s + 1e-12,
        },
        "failure_rate": {
            "warmopt": w["failure_rate"],
            "best_anchor": best_f,
            "met": w["failure_rate"] <= best_f + 1e-12,
        },
        "peak_quality": {
            "delta_val_vs_oracle": delta,
            "noise_2se": noise,
            "met": None
            if noise is None and delta > 0
            else (delta <= 0 or (noise is not None and delta <= noise)),
        },
        "warmup_cost": {
            "warmopt": w["warmup_cost"],
            "untuned_linear": summary["untuned_linear"]["warmup_cost"],
            "met": w["warmup_cost"] < summary["untuned_linear"]["warmup_cost"],
        },
    }


# --------------------------------------------------------------------------- report


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf" if v > 0 else "nan"
        return f"{v:.{digits}f}"
    return str(v)


def _fmt_lr(v: float | None) -> str:
    return "none" if v is None else f"{v:g}"


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    oracle_ran = all("linear_oracle" in t["grid"] for t in result["tasks"].values())
    lines = [
        f"# LR-robustness benchmark ({meta['mode']})",
        "",
        f"torch {meta['torch']}, {meta['machine']}, {meta['cpus']} CPUs, {meta['workers']} worker "
        f"processes x 1 thread, commit {meta['commit']}, seeds {meta['seeds']}, "
        f"{meta['runs']} runs in {meta['seconds']:.0f} s.",
        "",
        "Columns: **S** = LR sensitivity, mean over the grid of min(L, L0) minus the best L "
        "(L = final training loss, mean over seeds; lower = more robust). **fail** = share of runs "
        "with a non-finite final loss or L >= L0. **stall** = failed, or L within 2 % of the best "
        "constant predictor's loss. **max stable LR** = largest grid LR with no failed or stalled "
        "seed. **best val** = best validation loss over the grid (mean over seeds) and its "
        "difference to the hand-tuned linear oracle (± two standard errors of the difference). "
        "**warm-up cost** = mean training loss over the first 20 % of steps at the method's best "
        "LR.",
        "Untuned anchors for the targets: "
        + ", ".join(UNTUNED_ANCHORS)
        + " (those present on the task); "
        "GI and schedule-free are shown beside them.",
        "",
        "Plots: "
        + ", ".join(f"`{p}`" for p in result.get("plots", []))
        + "; curves and warm-up scales at "
        + (
            "the largest LR the hand-tuned oracle still rescues: "
            if oracle_ran
            else "the largest LR at which no method that ran stalled (the oracle did not run): "
        )
        + ", ".join(f"{k} {v:g}" for k, v in result.get("high_lr", {}).items())
        + ".",
        "",
    ]
    if meta.get("methods") is not None:
        lines += [f"Only the methods {', '.join(meta['methods'])} ran (`--methods`).", ""]
    for task, t in result["tasks"].items():
        spec = t["spec"]
        lrs = spec["lrs"]
        methods = list(t["summary"])
        has_oracle = "linear_oracle" in t["grid"]
        lines += [
            f"## {task}: {spec['title']}",
            "",
            f"{spec['steps']} steps, beta2/alpha = {spec['beta2']}, cosine decay, LRs "
            f"{', '.join(f'{x:g}' for x in lrs)}; L0 = {t['loss0']:.3f}, constant predictor "
            f"{t['constant_loss']:.3f}; oracle lengths {spec['oracle_lengths']}.",
            "",
            "| method | S | fail | stall | max stable LR | best LR | best val (Δ vs oracle) "
            "| warm-up cost |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in methods:
            s = t["summary"][m]
            delta = (
                ""
                if m == "linear_oracle" or s["val_vs_oracle"] is None
                else (
                    f" ({s['val_vs_oracle']:+.3f}"
                    + (f" ± {s['val_noise']:.3f})" if s["val_noise"] is not None else ")")
                )
            )
            lines.append(
                f"| {m} | {_fmt(s['sensitivity'])} | {s['failure_rate']:.2f} | "
                f"{s['stall_rate']:.2f} | "
                f"{_fmt_lr(s['largest_stable_lr'])} | {_fmt_lr(s['best_lr'])} | "
                f"{_fmt(s['best_val_loss'])}{delta} | {_fmt(s['warmup_cost'])} |"
            )
        lines += [
            "",
            "Final training loss vs LR (mean over seeds; `*` some seed failed, "
            "`†` some seed stalled):",
            "",
            "| method | " + " | ".join(f"lr={x:g}" for x in lrs) + " |",
            "|---|" + "---|" * len(lrs),
        ]
        for m in methods:
            cells = []
            for lr in lrs:
                c = t["grid"][m][repr(lr)]
                mark = "*" if c["failures"] else ("†" if c["stalls"] else "")
                cells.append(_fmt(c["final_loss"]) + mark)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if has_oracle:
            picks = [t["grid"]["linear_oracle"][repr(lr)]["picked"] for lr in lrs]
            lines += [
                "",
                "Oracle's linear warm-up length per LR: "
                + ", ".join(f"{lr:g}: {p.split('_')[1]}" for lr, p in zip(lrs, picks))
                + ".",
            ]
        lines += _first_update_line(task, result)
        lines += _warm_table(t)
        lines += _target_lines(t)
        lines.append("")
    lines += _overall(result)
    return "\n".join(lines) + "\n"


def _first_update_line(task: str, result: dict[str, Any]) -> list[str]:
    """Batch loss before and right after the first update at the task's high LR (seed 0)."""
    curves = result.get("curves_seed0_high_lr", {}).get(task)
    if not curves:
        return []
    order = ADAM_METHODS + RMSPROP_METHODS

    def key(m: str) -> tuple[int, int]:
        if m.startswith("linear_"):
            return order.index("linear_oracle"), int(m.split("_")[1])
        return order.index(m), 0

    cells = []
    for m in sorted(curves["curves"], key=key):
        head = curves["curves"][m]["first_20"]
        if len(head) >= 2:
            cells.append(f"{m} {head[1]:.3g}")
    # The first batch loss is the same for every method (same weights, same batch).
    first = curves["curves"].get("none") or next(iter(curves["curves"].values()))
    before = first["first_20"][0] if first["first_20"] else float("nan")
    return [
        "",
        f"Batch loss right after the first update at lr={curves['lr']:g} (seed 0; "
        f"{before:.3g} before it): " + ", ".join(cells) + ".",
    ]


def _warm_table(t: dict[str, Any]) -> list[str]:
    w = t["warmup_lengths"]
    if not w["tensors"]:
        return []
    out = [
        "",
        "Measured warm-up of `warmopt` per parameter tensor: steps until its scale s_t (on RMSprop "
        "the confidence before the sqrt(1-alpha^t) bias factor) first reaches 0.5 / 0.9 / 1.0 — "
        "median over all LRs and seeds [min–max]; `>N` = not reached in most runs. Closed forms "
        "of the anchors below.",
        "",
        "| tensor | kind | numel | to 0.5 | to 0.9 | to 1.0 |",
        "|---|---|---|---|---|---|",
    ]
    steps = w["steps"]
    for row in w["tensors"]:
        cells = []
        for lvl in row["levels"]:
            if lvl["median"] is None:
                cells.append(f">{steps}" + (f" [{lvl['min']}–]" if lvl["min"] else ""))
            else:
                hi = lvl["max"] if lvl["max"] is not None else f">{steps}"
                cells.append(f"{lvl['median']:g} [{lvl['min']}–{hi}]")
        out.append(
            f"| {row['name']} | {row['kind']} | {row['numel']} | " + " | ".join(cells) + " |"
        )
    for name, vals in w["anchors"].items():
        cells = [str(v) if v is not None else "> 200000" for v in vals]
        out.append(f"| *{name}* (closed form) | all | | " + " | ".join(cells) + " |")
    kinds = ", ".join(f"{k}: {v['median_steps_to_0.9']:.0f}" for k, v in w["by_kind"].items())
    out += ["", f"Median over runs of the mean steps to 0.9 per tensor kind: {kinds}."]
    if "embedding_longer_than_matrix" in w:
        e = w["embedding_longer_than_matrix"]
        what = "token embedding" if e["kind"] == "embedding" else "input layer (sparse pixels)"
        out.append(
            f"The {what} warmed longer (mean steps to 0.9) than the other weight matrices in "
            f"{e['longer']} of {e['runs']} runs (unreached counted as steps + 1)."
        )
    return out


def _target_lines(t: dict[str, Any]) -> list[str]:
    g = t["targets"]
    if g is None:
        return [
            "",
            "Targets: n/a (they compare "
            + ", ".join(TARGET_NEEDS)
            + " and an untuned anchor, not all of which ran).",
        ]

    def mark(v: bool | None) -> str:
        return "n/a" if v is None else ("**met**" if v else "**missed**")

    pq = g["peak_quality"]
    noise = "" if pq["noise_2se"] is None else f" ± {pq['noise_2se']:.3f}"
    sens, fail, stall, cost = g["sensitivity"], g["failure_rate"], g["stall_rate"], g["warmup_cost"]
    return [
        "",
        "Targets: "
        f"S {sens['warmopt']:.3f} vs best untuned anchor {sens['best_anchor']:.3f} "
        f"({sens['best_anchor_method']}) {mark(sens['met'])}; "
        f"failure rate {fail['warmopt']:.2f} vs {fail['best_anchor']:.2f} {mark(fail['met'])} "
        f"(stall rate {stall['warmopt']:.2f} vs {stall['best_anchor']:.2f} {mark(stall['met'])}); "
        f"best val vs oracle {pq['delta_val_vs_oracle']:+.3f}{noise} {mark(pq['met'])}; "
        f"warm-up cost {cost['warmopt']:.3f} vs untuned linear {cost['untuned_linear']:.3f} "
        f"{mark(cost['met'])}.",
    ]


def _overall(result: dict[str, Any]) -> list[str]:
    rows = [
        "## Targets across tasks",
        "",
        "| task | S ≤ best anchor | fail ≤ best anchor | (stall ≤ best anchor) "
        "| val within noise of oracle | cost < untuned linear |",
        "|---|---|---|---|---|---|",
    ]
    for task, t in result["tasks"].items():
        g = t["targets"]

        def yn(v: bool | None) -> str:
            return "n/a" if v is None else ("yes" if v else "no")

        if g is None:
            rows.append(f"| {task} | n/a | n/a | n/a | n/a | n/a |")
            continue
        rows.append(
            f"| {task} | {yn(g['sensitivity']['met'])} | {yn(g['failure_rate']['met'])} | "
            f"{yn(g['stall_rate']['met'])} | "
            f"{yn(g['peak_quality']['met'])} | {yn(g['warmup_cost']['met'])} |"
        )
    rows += ["", "Notes: " + " ".join(result["notes"])]
    return rows


# --------------------------------------------------------------------------- plots

STYLE = {
    "none": ("k", ":"),
    "linear_oracle": ("tab:gray", "-"),
    "untuned_linear": ("tab:blue", "--"),
    "untuned_exponential": ("tab:cyan", "--"),
    "radam": ("tab:green", "--"),
    "gi_adam": ("tab:olive", "-."),
    "gi_rmsprop": ("tab:olive", "-."),
    "schedulefree": ("tab:brown", "-."),
    "warmopt": ("tab:red", "-"),
    "warmopt_nostats": ("tab:pink", ":"),
    "warmopt_nodrift": ("tab:orange", ":"),
    "warmopt_prior2": ("tab:gray", ":"),
    "warmopt_sample256": ("tab:red", "--"),
    "warmopt_every4": ("tab:red", ":"),
    "warmopt_group": ("tab:purple", ":"),
}


def plot_lr_index(runs: list[dict[str, Any]], result: dict[str, Any]) -> dict[str, float]:
    """The 'high LR' of each task: the largest LR that the hand-tuned linear warm-up still rescues
    (no stalled seed), else the top of the grid. Without the oracle (``--methods``): the largest
    LR at which no method that ran stalled, else the top of the grid."""
    out = {}
    for task, t in result["tasks"].items():
        lrs = t["spec"]["lrs"]
        judges = ["linear_oracle"] if "linear_oracle" in t["grid"] else list(t["grid"])
        ok = [lr for lr in lrs if all(t["grid"][m][repr(lr)]["stalls"] == 0 for m in judges)]
        out[task] = max(ok) if ok else max(lrs)
    return out


def make_plots(
    runs: list[dict[str, Any]], result: dict[str, Any], out: Path, suffix: str
) -> list[str]:
    """The three figures; names end in ``suffix`` (``_quick``/``_tiny``), as .gitignore expects."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return []
    tasks = list(result["tasks"])
    high = plot_lr_index(runs, result)
    files = []
    n = len(tasks)
    cols = min(3, n)
    rows_ = math.ceil(n / cols)

    # 1. Final training loss vs LR.
    fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 3.9 * rows_), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        t = result["tasks"][task]
        lrs = t["spec"]["lrs"]
        lowest = t["loss0"]
        for m in t["summary"]:
            ys = [t["grid"][m][repr(lr)]["final_loss"] for lr in lrs]
            ys = [min(y, t["loss0"]) if math.isfinite(y) else t["loss0"] for y in ys]
            lowest = min(lowest, *ys)
            color, ls = STYLE.get(m, ("k", "-"))
            ax.plot(
                lrs,
                ys,
                ls,
                color=color,
                marker="o",
                ms=3,
                lw=2.2 if m == "warmopt" else 1.2,
                label=m,
            )
        ax.axhline(t["loss0"], color="k", lw=0.5)
        ax.set_xscale("log")
        if t["loss0"] > 10 * max(lowest, 1e-12):  # losses spanning decades (MLPs): log scale
            ax.set_yscale("log")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final training loss (capped at L0)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=8, ncol=2)
    fig.tight_layout()
    files.append(f"quality_lr{suffix}.png")
    fig.savefig(out / files[-1], dpi=100)
    plt.close(fig)

    # 2. Loss curves at the high LR, seed 0.
    fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 3.9 * rows_), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        t = result["tasks"][task]
        lr = high[task]
        picked = t["grid"].get("linear_oracle", {}).get(repr(lr), {}).get("picked")
        for m in t["summary"]:
            key = picked if m == "linear_oracle" else m
            sel = [
                r
                for r in runs
                if r["task"] == task and r["method"] == key and r["lr"] == lr and "curve" in r
            ]
            if not sel:
                continue
            c = [
                min(v, 10 * t["loss0"]) if math.isfinite(v) else 10 * t["loss0"]
                for v in sel[0]["curve"]
            ]
            k = max(1, len(c) // 80)
            smooth = [sum(c[i : i + k]) / len(c[i : i + k]) for i in range(0, len(c), k)]
            color, ls = STYLE.get(m, ("k", "-"))
            ax.plot(
                [i * k + 1 for i in range(len(smooth))],
                smooth,
                ls,
                color=color,
                lw=2.2 if m == "warmopt" else 1.0,
                label=m if m != "linear_oracle" else f"linear_oracle ({key[7:]})",
            )
        ax.set_yscale("log")
        ax.set_title(f"{task}, lr={lr:g}, seed 0", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (batch, smoothed)")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    files.append(f"quality_curves{suffix}.png")
    fig.savefig(out / files[-1], dpi=100)
    plt.close(fig)

    # 3. Warm-up scale over steps: warmopt per tensor (at the high LR, seed 0) beside the anchors.
    fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 3.9 * rows_), squeeze=False)
    kind_color = {
        "embedding": "tab:red",
        "input": "tab:red",
        "position": "tab:orange",
        "matrix": "tab:blue",
        "vector": "tab:green",
    }
    for ax, task in zip(axes.flat, tasks):
        t = result["tasks"][task]
        spec = next(s for s in task_specs(result["meta"]["mode"]) if s.name == task)
        lr = high[task]
        sel = [
            r
            for r in runs
            if r["task"] == task
            and r["method"] == "warmopt"
            and r["lr"] == lr
            and "conf_trace" in r
        ]
        steps = spec.steps
        if sel and sel[0]["conf_trace"]:
            trace = sel[0]["conf_trace"]
            kinds = sel[0]["kinds"]
            seen = set()
            for j, name in enumerate(kinds):
                ys = [row[j] for row in trace] + [1.0] * (steps - len(trace))
                kind = kinds[name]
                ax.plot(
                    range(1, len(ys) + 1),
                    ys,
                    color=kind_color[kind],
                    lw=0.8,
                    alpha=0.7,
                    label=f"warmopt: {kind}" if kind not in seen else None,
                )
                seen.add(kind)
        xs = range(1, steps + 1)
        for name, fn in anchor_scales(spec).items():
            color, _ = STYLE[name]
            ax.plot(xs, [fn(x) for x in xs], "--", color=color, lw=1.5, label=name)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{task}: warm-up scale (lr={lr:g}, seed 0)", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("scale s_t")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    files.append(f"quality_warmup{suffix}.png")
    fig.savefig(out / files[-1], dpi=100)
    plt.close(fig)
    return files


# --------------------------------------------------------------------------- main


def _init_worker() -> None:
    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    git_commit()  # stamp the results with the code as it is when the run starts
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="one seed, half the steps (a few minutes)")
    g.add_argument(
        "--tiny", action="store_true", help="a few steps: checks the script runs (seconds)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--workers", type=int, default=2, help="worker processes, 1 thread each (default 2)"
    )
    ap.add_argument("--tasks", nargs="*", default=None, help="run only these tasks")
    known = list(dict.fromkeys(ADAM_METHODS + RMSPROP_METHODS))
    ap.add_argument(
        "--methods",
        nargs="*",
        default=None,
        metavar="METHOD",
        help="run only these methods (default: all); a task none of them applies to is left out",
    )
    args = ap.parse_args(argv)
    only = args.methods
    if only is not None:
        unknown = [m for m in only if m not in known]
        if unknown or not only:
            what = f"unknown method(s) {', '.join(map(repr, unknown))}" if unknown else "no method"
            ap.error(f"--methods: {what}; choose from {', '.join(known)}")
        only = [m for m in known if m in only]  # table order, no duplicates
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    seeds = [0, 1] if mode == "full" else [0]
    specs = [s for s in task_specs(mode) if args.tasks is None or s.name in args.tasks]
    if not specs:
        raise SystemExit(f"no task selected; choose from {[s.name for s in task_specs(mode)]}")
    specs = [s for s in specs if methods_for(s, only)]
    if not specs:
        ap.error(f"--methods: none of {only} applies to the selected tasks")
    torch.set_num_threads(1)
    # Most expensive tasks first, so the two workers finish together.
    order = {"gru_rmsprop": 0, "lm_post_ln": 1, "lm_pre_ln": 2, "digits_mse": 3, "digits_ce": 4}
    jobs = [
        (mode, s.name, m, lr, seed)
        for s in sorted(specs, key=lambda s: order.get(s.name, 9))
        for lr in reversed(s.lrs)
        for seed in seeds
        for m in runnable_for(s, only)
    ]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover

        def tqdm(x: Any, **_: Any) -> Any:  # type: ignore[no-redef]
            return x

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    if args.workers <= 1:
        for job in tqdm(jobs, desc="quality", unit="run"):
            runs.append(run_one(job))
    else:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(
            args.workers, initializer=_init_worker
        ) as pool:
            for r in tqdm(
                pool.imap_unordered(run_one, jobs, chunksize=1),
                total=len(jobs),
                desc="quality",
                unit="run",
            ):
                runs.append(r)
    elapsed = time.perf_counter() - t0

    notes = [
        "pytorch_warmup's untuned classes on RMSprop: "
        f"`{pytorch_warmup_rejects_rmsprop()}` (they read group['betas']), so the RMSprop task "
        "uses "
        "pytorch_warmup.LinearWarmup(warmup_period=int(2/(1-alpha))) and "
        "ExponentialWarmup(warmup_period=int(1/(1-alpha))): the same untuned rules on alpha.",
        "With one param group, granularity='group' is one scale for the whole model.",
        "Schedule-free AdamW runs at constant LR without warm-up (warmup_steps=0); every other "
        "method "
        "has the shared cosine decay.",
    ]
    result: dict[str, Any] = {"meta": {}, "tasks": {}, "notes": notes}
    for spec in specs:
        task_runs = [r for r in runs if r["task"] == spec.name]
        result["tasks"][spec.name] = summarize_task(spec, task_runs, seeds, only)
        result["tasks"][spec.name]["cpu_seconds"] = round(sum(r["seconds"] for r in task_runs), 1)
    result["meta"] = {
        "mode": mode,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "threads_per_worker": 1,
        "commit": git_commit(),
        "seeds": seeds,
        "methods": only,
        "runs": len(runs),
        "started": started,
        "seconds": round(elapsed, 1),
        "versions": _versions(),
    }
    suffix = {"full": "", "quick": "_quick", "tiny": "_tiny"}[mode]
    stem = f"quality{suffix}"
    args.out.mkdir(parents=True, exist_ok=True)
    result["plots"] = make_plots(runs, result, args.out, suffix)
    result["high_lr"] = plot_lr_index(runs, result)
    result["curves_seed0_high_lr"] = _curves_for_json(runs, result)
    # Per-run records; the tensor kinds and sizes are in each task's warmup_lengths already.
    dropped = ("curve", "conf_trace", "kinds", "numel")
    result["runs"] = [{k: v for k, v in r.items() if k not in dropped} for r in runs]
    text = markdown(result)
    (args.out / f"{stem}.json").write_text(json.dumps(_finite(result), indent=1, allow_nan=False))
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    print(f"{len(runs)} runs in {elapsed:.0f} s; results in {args.out}/{stem}.*")
    return result


def _curves_for_json(runs: list[dict[str, Any]], result: dict[str, Any]) -> dict[str, Any]:
    """Seed-0 loss curves at each task's high LR, every k-th step (at most ~100 points)."""
    out: dict[str, Any] = {}
    for task, lr in result["high_lr"].items():
        out[task] = {"lr": lr, "curves": {}}
        for r in runs:
            if r["task"] == task and r["lr"] == lr and "curve" in r:
                k = max(1, len(r["curve"]) // 100)
                out[task]["curves"][r["method"]] = {
                    "first_20": r["curve"][:20],
                    "every": k,
                    "loss": r["curve"][::k],
                }
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"warmopt": warmopt.__version__}  # run from the checkout: maybe not pip-installed
    for name in ("pytorch-warmup", "schedulefree", "scikit-learn", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _finite(o: Any) -> Any:
    """A copy that strict JSON accepts: inf and nan become null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


if __name__ == "__main__":
    main()
