"""How the measured kurtosis K of g^2 changes over the first steps of real training.

The precision confidence of ``Measured(confidence=True)`` starts from a prior ``K_0``
(``Measured.prior_kurtosis``) because the spread
measured while the parameters have barely moved understates what the updates will cause. This
script measures that: it trains each task of ``benchmarks.quality`` (full sizes, seed 0, the cosine
decay of that benchmark; the tuning tasks only) with ``Measured(max_update=None, confidence=True,
drift=True, prior_kurtosis=2)`` -- a Gaussian prior
that the measurements outweigh after a couple of steps -- at one mid-grid learning rate, and
reports the per-tensor estimate ``K`` (``state[p]['warmup_kurtosis']``) at a few steps: median and
quartiles over all tensors with more than one element.

Usage::

    python -m benchmarks.kurtosis_growth          # ~1 minute on a 2-core CPU
    python -m benchmarks.kurtosis_growth --tiny   # seconds: the smoke test's setting

Writes ``benchmarks/results/kurtosis_growth.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

import warmopt
from benchmarks.harness import git_commit
from benchmarks.quality import build_runner
from benchmarks.quality_tasks import get_problem, task_specs

RESULTS = Path(__file__).resolve().parent / "results"
#: the precision confidence and lag factor (the fresh-ratio statistics that measure K), with a
#: Gaussian prior that the measurements outweigh after a couple of steps
PRIOR2 = warmopt.Measured(
    max_update=None, confidence=True, drift=True, prior_kurtosis=2.0, rewarm=False
)
STEPS = (5, 20, 100)
LR = 0.01


def kurtosis_trace(task: str, mode: str, steps: tuple[int, ...], lr: float) -> dict[int, list]:
    """``K`` of every multi-element tensor of ``task`` after each step in ``steps``."""
    spec = next(s for s in task_specs(mode) if s.name == task)
    prob = get_problem(spec)
    model = prob.make_model(0)
    params = [p for p in model.parameters()]
    # the quality benchmark's runner (same schedule), with the Gaussian-prior policy
    import benchmarks.quality as quality

    saved = dict(quality.WARMOPT)
    quality.WARMOPT["warmopt"] = (lambda: PRIOR2, "tensor")
    try:
        runner = build_runner("warmopt", spec, params, lr)
    finally:
        quality.WARMOPT.clear()
        quality.WARMOPT.update(saved)
    plan = prob.plan(0, spec.steps)
    out: dict[int, list] = {}
    for i in range(min(max(steps), spec.steps)):
        loss = prob.loss(model, plan, i)
        runner.opt.zero_grad(set_to_none=True)
        loss.backward()
        runner.step()
        if i + 1 in steps:
            st = runner.opt.state
            out[i + 1] = [float(st[p]["warmup_kurtosis"]) for p in params if p.numel() > 1]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    git_commit()  # stamp the results with the code as it is when the run starts
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    mode, steps = ("tiny", (2, 4, 8)) if args.tiny else ("full", STEPS)
    tasks = [s.name for s in task_specs(mode) if s.split == "tuning"]
    per_task = {t: kurtosis_trace(t, mode, steps, LR) for t in tasks}
    rows = []
    for step in steps:
        ks = [k for t in tasks for k in per_task[t].get(step, [])]
        q1, med, q3 = statistics.quantiles(ks, n=4) if len(ks) > 1 else (ks[0],) * 3
        rows.append({"step": step, "tensors": len(ks), "q1": q1, "median": med, "q3": q3})
    lines = [
        f"K (estimated excess kurtosis of g^2) per tensor, Measured(max_update=None, "
        f"confidence=True, drift=True, prior_kurtosis=2, rewarm=False), lr={LR}, "
        f"seed 0, tasks {', '.join(tasks)}; torch {torch.__version__}, commit {git_commit()}",
        "",
        "| step | tensors | q1 | median | q3 |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['step']} | {r['tensors']} | {r['q1']:.2f} | {r['median']:.2f} | {r['q3']:.2f} |"
        for r in rows
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    result = {
        "meta": {
            "torch": torch.__version__,
            "machine": platform.platform(),
            "commit": git_commit(),
            "lr": LR,
            "mode": mode,
        },
        "rows": rows,
        "per_task": {t: {str(k): v for k, v in d.items()} for t, d in per_task.items()},
    }
    stem = "kurtosis_growth_tiny" if args.tiny else "kurtosis_growth"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{stem}.md").write_text(table)
    return result


if __name__ == "__main__":
    main()
