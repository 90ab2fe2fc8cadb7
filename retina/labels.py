"""Class names and label schemes shared by readers, training, evaluation and serving."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

# MedMNIST/OCTMNIST order; OCT2017 folder names are the same strings.
OCT_CLASSES: tuple[str, ...] = ("CNV", "DME", "DRUSEN", "NORMAL")

# International Clinical DR severity scale, as in the EyePACS/APTOS `level`/`diagnosis`.
DR_GRADES: tuple[str, ...] = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")

FundusScheme = Literal["grade", "referable", "any", "binary-strict"]

SCHEME_CLASSES: dict[str, tuple[str, ...]] = {
    "grade": DR_GRADES,
    "referable": ("Non-referable", "Referable DR"),  # grade >= 2
    "any": ("No DR", "DR"),  # grade >= 1
    "binary-strict": ("No DR", "DR"),  # 0 vs 3-4; grades 1-2 dropped
}


def map_grade(grade: int, scheme: str) -> int | None:
    """DR grade 0-4 -> class index under ``scheme``; ``None`` means drop the image."""
    if not 0 <= grade <= 4:
        raise ValueError(f"DR grade must be 0-4, got {grade}")
    if scheme == "grade":
        return grade
    if scheme == "referable":
        return int(grade >= 2)
    if scheme == "any":
        return int(grade >= 1)
    if scheme == "binary-strict":
        return 0 if grade == 0 else (1 if grade >= 3 else None)
    raise ValueError(f"unknown fundus label scheme {scheme!r}; known: {sorted(SCHEME_CLASSES)}")


def p_grade_at_least(grade_probs: Any, min_grade: int) -> Any:
    """P(grade >= ``min_grade``): the sum of grade probabilities ``min_grade..4``.

    ``grade_probs`` ``(..., 5)`` in ``[0, 1]`` -> ``(...)`` float64 (a NumPy scalar for one image).
    The one definition of referable DR (``min_grade=2``) and any DR (``1``) for serving,
    referral, metrics and plots.
    """
    return np.asarray(grade_probs, dtype=np.float64)[..., min_grade:].sum(axis=-1)


def derived_dr_probabilities(grade_probs: np.ndarray) -> dict[str, float]:
    """Binary DR probabilities derived from 5-grade probabilities ``(5,)``.

    ``referable`` = P(grade >= 2), ``any`` = P(grade >= 1) (DR / No DR).
    """
    p = np.asarray(grade_probs, dtype=np.float64)
    if p.shape != (5,):
        raise ValueError(f"expected 5 grade probabilities, got shape {p.shape}")
    return {"referable": float(p_grade_at_least(p, 2)), "any": float(p_grade_at_least(p, 1))}
