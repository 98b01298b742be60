"""Counting the ATen ops a step dispatches: the tool behind the op-count tests and benchmarks.

Not used by the optimizer itself. A view (``as_strided``, ``view``, ``unbind`` ...) only makes a
new tensor header: it is counted among the ops but not among the ``kernels``, the ops that read
or write tensor data (one or more kernel launches each on an accelerator).
"""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNC_OPS", "OpCounter"]

#: ops that copy a device value to the host (a host-device sync on an accelerator)
SYNC_OPS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal")


class OpCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts every ATen op dispatched inside the mode (CPU or GPU alike)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops: Counter[str] = Counter()
        self.views: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func.overloadpacket)
        self.ops[name] += 1
        if func.is_view:
            self.views[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def kernels(self) -> Counter[str]:
        """The ops that are not views (each touches tensor data)."""
        return self.ops - self.views

    @property
    def syncs(self) -> int:
        return sum(n for op, n in self.ops.items() if op in SYNC_OPS)
