"""Pieces every benchmark shares: the git stamp of a result and the ATen op counter."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from warmopt._opcount import SYNC_OPS, OpCounter


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


__all__ = ["SYNC_OPS", "OpCounter", "git_commit"]
