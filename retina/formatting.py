"""How a figure and its 95% interval are written, in reports, model cards and the PDF."""

from __future__ import annotations

import math
from typing import Any, Literal

CiStyle = Literal["brackets", "to", "dash"]


def fmt_number(x: Any, pct: bool = False) -> str:
    """``0.123`` (or ``12.3%``) for a finite number, a string as it is, ``n/a`` for anything else
    (None, NaN, inf, or an odd value in a hand-edited or older checkpoint)."""
    if isinstance(x, str):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
        return f"{100 * x:.1f}%" if pct else f"{x:.3f}"
    return "n/a"


def _interval(ci: Any) -> tuple[float, float] | None:
    """``(lo, hi)`` when ``ci`` is a pair of finite numbers (anything else: hand-edited or older files)."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        if all(math.isfinite(c) for c in ci):
            return float(ci[0]), float(ci[1])
    return None


def fmt_ci(value: Any, ci: Any, *, pct: bool = False, style: CiStyle = "brackets") -> str:
    """``value`` with its interval: ``0.850 [0.800, 0.900]`` (``brackets``), ``0.850 (0.800 to 0.900)``
    (``to``) or ``0.850 (0.800-0.900)`` (``dash``); only the value when there is no valid interval."""
    v = fmt_number(value, pct)
    pair = _interval(ci)
    if pair is None:
        return v
    lo, hi = fmt_number(pair[0], pct), fmt_number(pair[1], pct)
    if style == "to":
        return f"{v} ({lo} to {hi})"
    if style == "dash":
        return f"{v} ({lo}-{hi})"
    return f"{v} [{lo}, {hi}]"
