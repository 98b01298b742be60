"""What every benchmark shares: timing rounds, layouts, candidates, results files and markdown.

* **Rounds** (:func:`run_rounds`): every candidate steps once per round, in a freshly shuffled
  order, each step timed alone (``time.perf_counter``, with a device synchronize around it on
  CUDA), the first rounds discarded, the garbage collector off. Comparing candidates *within* a
  round (:func:`paired_ratios`) cancels the slow drifts of a shared machine's load.
* **Layouts** (:class:`Layout`): a set of parameter tensors with gradients (``grad_sets`` to
  cycle through), random or from real backward passes of a model.
* **Results** (:func:`write_results`): ``<name>.json`` stamped with torch version, machine and
  git commit (:func:`stamp`), and ``<name>.md``; :func:`table` writes a markdown table.
* The ATen op counter (``OpCounter``, ``SYNC_OPS``) is the package's private one, shared with
  the tests.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from warmopt._opcount import SYNC_OPS, OpCounter

__all__ = [
    "RESULTS", "SYNC_OPS", "OpCounter", "git_commit", "stamp", "Layout", "random_layout",
    "model_layout", "Candidate", "run_rounds", "quartiles", "paired_ratios", "table",
    "write_results", "finite", "Progress", "quiet_stderr",
]  # fmt: skip

RESULTS = Path(__file__).resolve().parent / "results"


@functools.cache
def git_commit() -> str:
    """Short hash of HEAD (``+dirty`` if tracked files outside ``benchmarks/results`` differ;
    ``unknown`` outside git).

    Taken once per process, at the first call (each benchmark makes it when its run starts), so a
    long run is stamped with the code it ran, not with whatever HEAD is when it finishes; results
    written by other benchmarks meanwhile do not make the code "dirty"."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=here)
        return done.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git(
            "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
            ":(top,exclude)benchmarks/results",
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def stamp(**extra: Any) -> dict[str, Any]:
    """What a results file says about the run: torch, Python, machine, commit, threads."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "commit": git_commit(),
        "threads": torch.get_num_threads(),
        **extra,
    }


# --------------------------------------------------------------------------------- layouts


@dataclass
class Layout:
    """A set of parameter tensors and gradient sets to cycle through."""

    name: str
    description: str
    templates: list[Tensor]  # initial parameter values
    grad_sets: list[list[Tensor]]  # grad_sets[k][i]: gradient of tensor i in set k

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.templates)


def random_layout(
    name: str, description: str, shapes: Sequence[tuple[int, ...]], n_sets: int,
    device: torch.device, gen: torch.Generator,
) -> Layout:  # fmt: skip
    """Gaussian parameters (scale 0.02) and gradients of the given shapes."""
    templates = [torch.randn(s, generator=gen).mul_(0.02).to(device) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(device) for s in shapes] for _ in range(n_sets)]
    return Layout(name, description, templates, grads)


def model_layout(
    name: str, description: str, model: nn.Module, batch: Callable[[], Tensor], n_sets: int,
    device: torch.device,
) -> Layout:  # fmt: skip
    """``model``'s parameters, with gradients from real backward passes of ``model(batch())``."""
    model = model.to(device)
    params = list(model.parameters())
    grad_sets = []
    for _ in range(n_sets):
        model.zero_grad(set_to_none=True)
        model(batch().to(device)).square().mean().backward()
        grad_sets.append([p.grad.detach().clone() for p in params])  # type: ignore[union-attr]
    return Layout(name, description, [p.detach().clone() for p in params], grad_sets)


# ------------------------------------------------------------------------------ candidates


@dataclass
class Candidate:
    """One thing to time: ``step`` after ``set_grads(round)``; its times land in ``times``."""

    key: str
    step: Callable[[], Any]
    set_grads: Callable[[int], None] = lambda k: None
    info: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_rounds(
    candidates: list[Candidate], rounds: int, discard: int, rng: random.Random,
    device: torch.device, progress: Callable[[int], None] = lambda n: None,
) -> None:  # fmt: skip
    """``discard + rounds`` rounds of one step per candidate in shuffled order; the times of the
    last ``rounds`` rounds are appended to each candidate's ``times``."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(discard + rounds):
            order = list(candidates)
            rng.shuffle(order)
            for c in order:
                c.set_grads(r)
                _sync(device)
                t0 = time.perf_counter()
                c.step()
                _sync(device)
                dt = time.perf_counter() - t0
                if r >= discard:
                    c.times.append(dt)
            progress(1)
    finally:
        if was_enabled:
            gc.enable()


def quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)``."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def paired_ratios(a: Candidate, b: Candidate) -> tuple[float, float, float]:
    """Quartiles of the per-round ratio ``time(a) / time(b)`` (same round, same gradients)."""
    return quartiles([x / y for x, y in zip(a.times, b.times)])


# --------------------------------------------------------------------------------- results


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table, as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return lines


def write_results(name: str, result: dict[str, Any], markdown: str, out: Path = RESULTS) -> None:
    """``out/<name>.json`` and ``out/<name>.md``; the markdown is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / (name + '.json')} and {name}.md")


def finite(o: Any) -> Any:
    """A copy that strict JSON accepts: inf and nan become null (dict keys become strings)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


class Progress:
    """tqdm when installed and wanted, otherwise nothing."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=desc, unit="round", file=sys.stderr)

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints a line at every profiler start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
