"""Pieces every benchmark shares: the git stamp of a result and the ATen op counter."""

from __future__ import annotations

import functools
import subprocess
from collections import Counter
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

#: ops that copy a device value to the host (a host-device sync on an accelerator)
SYNC_OPS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal")


@functools.cache
def git_commit() -> str:
    """Short hash of HEAD (``+dirty`` if tracked files outside ``benchmarks/results`` differ;
    ``unknown`` outside git).

    Taken once per process, at the first call (each benchmark makes it when its run starts), so a
    long run is stamped with the code it ran, not with whatever HEAD is when it finishes; results
    written by other benchmarks meanwhile do not make the code "dirty"."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=here,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                ":(top,exclude)benchmarks/results",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=here,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


class OpCounter(TorchDispatchMode):
    """Counts every ATen op dispatched inside the mode (CPU or GPU alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def syncs(self) -> int:
        return sum(n for op, n in self.ops.items() if op in SYNC_OPS)


__all__ = ["SYNC_OPS", "OpCounter", "git_commit"]
