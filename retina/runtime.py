"""Where torch work runs: the device and the cores this process may use (training and serving share it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error naming ``setting``."""
    # torch is imported here, not at the top: the service reads its settings (which use
    # usable_cores) and sets OMP_WAIT_POLICY before torch loads, because libgomp reads it once then.
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting}=cuda requested but no CUDA device is available")
    return torch.device(name)


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity/cgroup pinning (containers), not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)
