"""Names the benchmarks imported from here before ``benchmarks/harness.py`` held them."""

from benchmarks.harness import SYNC_OPS, OpCounter, git_commit

__all__ = ["SYNC_OPS", "OpCounter", "git_commit"]
