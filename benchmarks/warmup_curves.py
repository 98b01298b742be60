"""Warm-up scale curves of every policy on synthetic gradients with known statistics.

Feeds i.i.d. gradients of a known distribution (and a drifting one) into the real optimizer
(``warmopt.Adam``, the same code path users run) for one 64 x 64 weight matrix with entries of
RMS 0.05 (a usual initial scale), and records, per policy, the first step at which the scale
reaches 0.5, 0.9 and 1.0. The default policy depends on the learning rate (it caps the step
relative to the weights), so it runs at several; the first default (``Measured(max_update=None,
confidence=True, drift=True, rewarm=False)``, "v1") and the anchors depend on the step count and
the gradients only. Gradients:

* ``gaussian``   N(0, 1)                                   kurtosis kappa = 3
* ``laplace``    Laplace(0, 1)                             kappa = 6
* ``sparse``     +-1 with probability 0.05, else 0         kappa = 20 (embedding-like)
* ``drift``      N(0, 1) * 1.02^t for t < 200, then flat   gradients growing faster than v̂ follows

Usage::

    python -m benchmarks.warmup_curves            # beta2 in {0.999, 0.99}, 6000 steps
    python -m benchmarks.warmup_curves --quick    # fewer steps, for a smoke run

Writes ``benchmarks/results/warmup_curves.json`` and ``.md`` (and a PNG when matplotlib is there).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import warmopt
from benchmarks.harness import git_commit

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLDS = (0.5, 0.9, 1.0)


def make_gradient(kind: str, step: int, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(n, generator=gen)
    if kind == "laplace":
        u = torch.rand(n, generator=gen) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs())
    if kind == "sparse":
        mask = (torch.rand(n, generator=gen) < 0.05).float()
        return mask * torch.sign(torch.randn(n, generator=gen))
    if kind == "drift":
        return torch.randn(n, generator=gen) * 1.02 ** min(step, 200)
    raise ValueError(f"unknown gradient kind {kind!r}")


POLICIES = {
    "measured": lambda: warmopt.Measured(),
    "v1": lambda: warmopt.Measured(max_update=None, confidence=True, drift=True, rewarm=False),
    "radam": lambda: warmopt.RAdamRectification(),
    "untuned_linear": lambda: warmopt.UntunedLinear(),
    "untuned_exponential": lambda: warmopt.UntunedExponential(),
}
#: the default's learning rates (the others run at the first, on which they do not depend)
LRS = (1e-4, 1e-3, 1e-2, 1e-1)
SHAPE = (64, 64)


def scale_curve(
    policy_name: str, kind: str, beta2: float, steps: int, lr: float = LRS[0], seed: int = 0
) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(0.05 * torch.randn(SHAPE, generator=gen))
    opt = warmopt.Adam([p], lr=lr, betas=(0.9, beta2), warmup=POLICIES[policy_name]())
    curve = []
    for t in range(1, steps + 1):
        p.grad = make_gradient(kind, t, p.numel(), gen).view(SHAPE)
        opt.step()
        curve.append(float(opt.warmup_scale[0][0]))
    return curve


def first_reach(curve: list[float], level: float) -> int | None:
    for i, s in enumerate(curve):
        if s >= level - (1e-6 if level == 1.0 else 0.0):
            return i + 1
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="600 steps, beta2=0.99 only")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    betas = [0.99] if args.quick else [0.999, 0.99]
    steps = 600 if args.quick else 6000
    kinds = ["gaussian", "laplace", "sparse", "drift"]
    rows = []
    curves: dict[str, list[float]] = {}
    for beta2 in betas:
        for kind in kinds:
            for name in POLICIES:
                if name not in ("measured", "v1") and kind != "gaussian":
                    continue  # the anchors depend on the step count only
                for lr in LRS if name == "measured" else LRS[:1]:
                    curve = scale_curve(name, kind, beta2, steps, lr)
                    curves[f"{name}/{kind}/{beta2}/{lr}"] = curve
                    reach = {str(lv): first_reach(curve, lv) for lv in THRESHOLDS}
                    rows.append(
                        {"beta2": beta2, "gradients": kind, "policy": name,
                         "lr": lr if name == "measured" else None, "scale_step1": curve[0],
                         **{f"steps_to_{k}": v for k, v in reach.items()}}
                    )  # fmt: skip
                    print(rows[-1])
    meta = {
        "torch": torch.__version__,
        "machine": platform.platform(),
        "python": platform.python_version(),
        "commit": git_commit(),
        "steps": steps,
        "shape": list(SHAPE),
        "weight_rms": 0.05,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "warmup_curves_quick" if args.quick else "warmup_curves"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = _markdown(rows, steps)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    _plot(curves, args.out / f"{stem}.png")


def _fmt(v: int | None, steps: int) -> str:
    return f"> {steps}" if v is None else str(v)


def _markdown(rows: list[dict], steps: int) -> str:
    lines = [
        "| beta2 | gradients | policy | lr | scale at step 1 | steps to 0.5 | to 0.9 | to 1.0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lr = "any" if r["lr"] is None else f"{r['lr']:g}"
        lines.append(
            f"| {r['beta2']} | {r['gradients']} | {r['policy']} | {lr} | {r['scale_step1']:.3f} | "
            f"{_fmt(r['steps_to_0.5'], steps)} | {_fmt(r['steps_to_0.9'], steps)} | "
            f"{_fmt(r['steps_to_1.0'], steps)} |"
        )
    return "\n".join(lines) + "\n"


def _plot(curves: dict[str, list[float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    betas = sorted({float(k.split("/")[2]) for k in curves}, reverse=True)
    fig, axes = plt.subplots(1, len(betas), figsize=(6 * len(betas), 4), squeeze=False)
    for ax, beta2 in zip(axes[0], betas):
        for key, curve in curves.items():
            name, kind, b, lr = key.split("/")
            if float(b) != beta2 or kind not in ("gaussian", "sparse"):
                continue
            label = {"measured": f"measured, lr={float(lr):g} ({kind})",
                     "v1": f"v1 ({kind})"}.get(name, name)  # fmt: skip
            style = "-" if name == "measured" else ("-." if name == "v1" else "--")
            ax.plot(range(1, len(curve) + 1), curve, style, label=label, lw=1.2)
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("scale")
        ax.set_title(f"beta2 = {beta2}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
