"""Getting values safely onto disk or the wire: plain-type conversion and atomic file writes."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def to_plain(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """NumPy/torch scalars and arrays -> Python types, tuples -> lists, NaN/inf -> ``None``.

    The result is strict JSON and ``torch.load(weights_only=True)``-safe. Objects of any
    other type are returned as they are, or passed through ``default`` (e.g. ``str`` for
    JSON answers that must never fail on an unexpected value).
    """
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return {str(k): to_plain(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, default) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist(), default)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return to_plain(obj.item(), default)
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj if default is None else default(obj)


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash (or an exception in the block) never leaves a half-written file at ``path``;
    the temporary file is removed on failure. ``suffix`` is appended to the full name, so a
    writer that insists on an extension (``np.savez`` adds ``.npz``) can be given one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
