"""Where per-tensor numbers are read: on the host when that is free, on the device otherwise.

Numbers held in CPU tensors (torch keeps ``state['step']`` on the CPU unless the group is
``capturable`` or ``fused``) can be read on the host at no cost, so the fast paths use host
scalars and views there. On an accelerator nothing may be read on the host without a
device sync, so the same paths keep every per-tensor number in device tensors.

The switch ``WARMOPT_DEVICE_PATH_ON_CPU=1`` (an environment variable, read when an optimizer
is built, unpickled or loads a state dict) makes an optimizer treat CPU tensors as if they
lived on an accelerator: it then takes exactly the code path CUDA takes, on the CPU. The
op-count, sync and parity tests use it to check that path without a GPU.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DEVICE_PATH_ON_CPU",
    "device_path_on_cpu",
    "HostCopy",
    "dtensor_type",
    "multi_rank",
    "split_to",
    "stack_to",
]

#: Environment variable: ``1`` runs the accelerator code path on CPU tensors.
DEVICE_PATH_ON_CPU = "WARMOPT_DEVICE_PATH_ON_CPU"


def device_path_on_cpu() -> bool:
    """Whether ``WARMOPT_DEVICE_PATH_ON_CPU`` asks for the accelerator path on the CPU."""
    return os.environ.get(DEVICE_PATH_ON_CPU, "0").strip().lower() in ("1", "true", "yes")


def dtensor_type() -> type | None:
    """``DTensor`` if torch.distributed.tensor is loaded (no DTensor can exist before that)."""
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def multi_rank() -> bool:
    """Whether this process is one of several ranks of an initialised process group (then
    host-side decisions that depend on device values must be the same on every rank)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def split_to(vector: Tensor, like: list[Tensor]) -> list[Tensor]:
    """The entries of ``vector`` as 0-d tensors on the devices of ``like`` (same order)."""
    devices = {t.device for t in like}
    if len(devices) == 1:
        (dev,) = devices
        return list(vector.to(dev, non_blocking=True).unbind(0))
    out: list[Tensor] = [vector] * len(like)
    for dev in devices:
        idx = [i for i, t in enumerate(like) if t.device == dev]
        part = vector[torch.tensor(idx, device=vector.device)].to(dev, non_blocking=True)
        for i, t in zip(idx, part.unbind(0)):
            out[i] = t
    return out


def stack_to(tensors: list[Tensor], device: torch.device) -> Tensor:
    """Stack 0-d tensors (possibly on several devices) into a float32 vector on ``device``."""
    devices = {t.device for t in tensors}
    if len(devices) == 1:
        return torch.stack(tensors).to(device=device, dtype=torch.float32, non_blocking=True)
    out = torch.empty(len(tensors), dtype=torch.float32, device=device)
    for dev in devices:  # one iteration per device, not per tensor
        idx = [i for i, t in enumerate(tensors) if t.device == dev]
        part = torch.stack([tensors[i] for i in idx]).to(device=device, dtype=torch.float32)
        out[torch.tensor(idx, device=device)] = part
    return out


class HostCopy:
    """A device tensor made readable on the host without a sync.

    ``publish`` starts a non-blocking copy to pinned host memory; ``poll`` returns the values
    (as a Python list, or a scalar for a 0-d tensor) once the copy has finished (an event query,
    not a wait) and ``None`` before. On the CPU the value is there at once. Used to learn that
    warm-up has finished, and the step counts a GradScaler step left, one step or more late.
    """

    def __init__(self) -> None:
        self._host: Tensor | None = None
        self._event: Any = None

    def reset(self) -> None:
        self._host, self._event = None, None

    @property
    def pending(self) -> bool:
        return self._host is not None

    def publish(self, value: Tensor, keep: bool = False) -> None:
        """Send ``value`` to the host (``keep=True``: not while an earlier value is unread)."""
        if keep and self._host is not None:
            return
        if value.device.type == "cpu":
            self._host, self._event = value, None
        elif value.device.type == "cuda":
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            host.copy_(value, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
            self._host, self._event = host, event
        else:  # other accelerators: never read, so the caller keeps its own estimate
            self._host, self._event = None, None

    def poll(self, wait: bool = False) -> Any:
        """The published values, or ``None`` while the copy is on its way (``wait=True``: wait
        for it instead -- an event wait on work enqueued earlier, not a device sync)."""
        if self._host is None:
            return None
        if self._event is not None and not self._event.query():
            if not wait:
                return None
            self._event.synchronize()
        # .tolist() reads host memory directly: no dispatched op, no device sync, and unlike
        # .numpy() it needs no NumPy (warmopt depends on torch only).
        return self._host.tolist()
