"""Referral advice from calibrated probabilities (what a screening programme acts on, not a class index).

Thresholds: the operating points stored in the checkpoint (``meta.extra["operating_points"]``,
chosen on validation or out-of-fold predictions, with the sensitivity and specificity measured
there), overridden by the ``RETINA_REFERRAL_*`` settings (any :class:`Thresholds`) when those are set, else 0.5.
A model whose validated balanced accuracy interval includes chance gives ``not_informative``
advice, never a referral (:func:`informative`).

Mappings:

* OCT, as in Kermany et al. 2018: CNV or DME -> ``urgent``; DRUSEN -> ``routine``;
  NORMAL -> ``observation``. Cumulative by severity, so probability split between two
  urgent classes still triggers: urgent when P(CNV) + P(DME) >= ``referral_oct_urgent``,
  else routine when P(CNV) + P(DME) + P(DRUSEN) >= ``referral_oct_routine``.
* Fundus (5 DR grades): proliferative (grade 4) -> ``urgent`` when P(4) >=
  ``referral_fundus_urgent``; referable (grade >= 2) -> ``refer`` when P(>= 2) >=
  ``referral_fundus_refer``; else ``rescreen_12_months``.
* An ungradable image -> ``ungradable`` (retake), never a diagnosis.

Models with other class sets get no referral (``None``): the service does not guess a policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from retina.labels import DR_GRADES, OCT_CLASSES, p_grade_at_least


class Thresholds(Protocol):
    """Operator overrides of the referral thresholds (the service's ``Settings`` is one); None = the checkpoint's."""

    referral_oct_urgent: float | None
    referral_oct_routine: float | None
    referral_fundus_refer: float | None
    referral_fundus_urgent: float | None


@dataclass(frozen=True)
class ReferralThresholds:
    """A plain :class:`Thresholds` outside the service (batch scoring); None everywhere = the checkpoints' own."""

    referral_oct_urgent: float | None = None
    referral_oct_routine: float | None = None
    referral_fundus_refer: float | None = None
    referral_fundus_urgent: float | None = None


RESEARCH_NOTE = "Research use only: not a medical device; a clinician must confirm any referral."

ADVICE: dict[str, str] = {
    "urgent_oct": "Urgent referral to a retina specialist: features of CNV or DME suspected.",
    "routine": "Routine referral to an ophthalmologist: drusen suspected.",
    "observation": "No referral suggested: routine observation.",
    "urgent_fundus": "Urgent referral to an ophthalmologist: proliferative diabetic retinopathy suspected.",
    "refer": "Refer to an ophthalmologist: referable (moderate or worse) diabetic retinopathy suspected.",
    "rescreen_12_months": "No referable diabetic retinopathy suspected: rescreen in 12 months.",
    "ungradable": "No assessment: the image is not gradable. Retake it (or refer for an in-person examination).",
    "not_informative": "No advice: this model's validated accuracy is not distinguishable from chance.",
}

# setting name -> operating-point key in the checkpoint
_POINTS = {
    "referral_oct_urgent": "urgent",
    "referral_oct_routine": "routine",
    "referral_fundus_refer": "refer",
    "referral_fundus_urgent": "urgent",
}


def operating_points(meta: Any) -> dict[str, dict[str, Any]]:
    """The checkpoint's operating points: ``{name: {threshold, sensitivity, specificity, fitted_on}}``."""
    points = (getattr(meta, "extra", None) or {}).get("operating_points") or {}
    return {k: v for k, v in points.items() if isinstance(v, dict) and "threshold" in v}


def threshold_for(setting: str, settings: Thresholds, meta: Any) -> float:
    """The served threshold: the setting when set, else the checkpoint's operating point, else 0.5."""
    value = getattr(settings, setting)
    if value is not None:
        return float(value)
    point = operating_points(meta).get(_POINTS[setting])
    return float(point["threshold"]) if point else 0.5


def served_thresholds(task: str, class_names: Sequence[str], settings: Thresholds, meta: Any) -> dict[str, float]:
    """The referral thresholds applied to a model: ``{point: threshold}`` (empty: no referral policy)."""
    names = list(class_names)
    if task == "oct" and sorted(names) == sorted(OCT_CLASSES):
        return {p: threshold_for(f"referral_oct_{p}", settings, meta) for p in ("urgent", "routine")}
    if task == "fundus" and tuple(names) == tuple(DR_GRADES):
        return {p: threshold_for(f"referral_fundus_{p}", settings, meta) for p in ("refer", "urgent")}
    return {}


def informative(meta: Any) -> bool:
    """False when the model's validated balanced accuracy 95 % interval reaches down to chance (1/K).

    Cross-validated figures (``metrics.cv``) are preferred, else the test split's.
    """
    metrics = getattr(meta, "metrics", None) or {}
    block = metrics.get("cv") or metrics.get("test") or metrics
    ci = block.get("balanced_accuracy_ci95") if isinstance(block, dict) else None
    if not ci or len(ci) != 2 or ci[0] is None:
        return True  # no interval to judge by (e.g. a custom model): advice as configured
    return float(ci[0]) > 1.0 / max(len(getattr(meta, "class_names", []) or [1]), 1)


def _sum(probs: np.ndarray, names: Sequence[str], wanted: Sequence[str]) -> float:
    return float(sum(probs[names.index(c)] for c in wanted))


def referral_for(
    task: str, class_names: Sequence[str], probs: np.ndarray, settings: Thresholds, meta: Any = None
) -> dict[str, Any] | None:
    """``{level, advice, reason, probability, threshold, note}`` for one image's ``probs (K,)``; None if no policy.

    ``meta`` (the checkpoint's metadata) supplies the operating points and the informativeness.
    """
    names = list(class_names)
    if meta is not None and not informative(meta) and task in ("oct", "fundus"):
        return {
            "level": "not_informative",
            "advice": ADVICE["not_informative"],
            "reason": "the model's validated balanced accuracy interval includes chance",
            "probability": None,
            "threshold": None,
            "note": RESEARCH_NOTE,
        }
    if task == "oct" and sorted(names) == sorted(OCT_CLASSES):
        t_urgent = threshold_for("referral_oct_urgent", settings, meta)
        t_routine = threshold_for("referral_oct_routine", settings, meta)
        p_urgent = _sum(probs, names, ("CNV", "DME"))
        p_any = p_urgent + _sum(probs, names, ("DRUSEN",))
        if p_urgent >= t_urgent:
            return _ref("urgent", ADVICE["urgent_oct"], "P(CNV) + P(DME)", p_urgent, t_urgent, ">=")
        if p_any >= t_routine:
            return _ref("routine", ADVICE["routine"], "P(CNV) + P(DME) + P(DRUSEN)", p_any, t_routine, ">=")
        return _ref("observation", ADVICE["observation"], "P(CNV) + P(DME) + P(DRUSEN)", p_any, t_routine, "<")
    if task == "fundus" and tuple(names) == tuple(DR_GRADES):
        t_urgent = threshold_for("referral_fundus_urgent", settings, meta)
        t_refer = threshold_for("referral_fundus_refer", settings, meta)
        p4 = float(probs[4])
        p_ref = float(p_grade_at_least(probs, 2))
        if p4 >= t_urgent and p_ref >= t_refer:
            return _ref("urgent", ADVICE["urgent_fundus"], "P(proliferative)", p4, t_urgent, ">=")
        if p_ref >= t_refer:
            return _ref("refer", ADVICE["refer"], "P(grade >= 2)", p_ref, t_refer, ">=")
        return _ref("rescreen_12_months", ADVICE["rescreen_12_months"], "P(grade >= 2)", p_ref, t_refer, "<")
    return None


# Classes a label may take under each referral level, so the label never contradicts the advice.
_CONSISTENT: dict[tuple[str, str], tuple[str, ...]] = {
    ("oct", "urgent"): ("CNV", "DME"),
    ("oct", "routine"): ("DRUSEN",),
    ("oct", "observation"): ("NORMAL",),
    ("fundus", "urgent"): (DR_GRADES[4],),
    ("fundus", "refer"): DR_GRADES[2:],
    ("fundus", "rescreen_12_months"): DR_GRADES[:2],
}


def label_chooser(
    task: str, class_names: Sequence[str], settings: Thresholds, meta: Any
) -> Callable[[np.ndarray], int]:
    """``probs -> class index`` shown as the label (what /gradcam explains by default)."""

    def choose(probs: np.ndarray) -> int:
        return consistent_label(task, class_names, probs, referral_for(task, class_names, probs, settings, meta))

    return choose


def consistent_label(task: str, class_names: Sequence[str], probs: np.ndarray, referral: dict[str, Any] | None) -> int:
    """Index of the most probable class among those the referral level allows (the argmax without a referral).

    With operating points below 0.5 (a screening threshold fitted for sensitivity), P(grade >= 2)
    can be 0.3 while "No DR" is the single likeliest grade: the answer then says "refer" and
    the likeliest referable grade, never "No DR" next to "Refer".
    """
    names = list(class_names)
    allowed = _CONSISTENT.get((task, referral["level"])) if referral else None
    if not allowed or not set(allowed) <= set(names):
        return int(np.argmax(probs))
    idx = [names.index(c) for c in allowed]
    return idx[int(np.argmax(probs[idx]))]


def ungradable_referral(reasons: Sequence[str]) -> dict[str, Any]:
    """The referral block of an image the gate found ungradable."""
    why = "; ".join(reasons) or "image quality"
    return {
        "level": "ungradable",
        "advice": ADVICE["ungradable"],
        "reason": why,
        "probability": None,
        "threshold": None,
        "note": RESEARCH_NOTE,
    }


def _ref(level: str, advice: str, what: str, p: float, threshold: float, op: str) -> dict[str, Any]:
    return {
        "level": level,
        "advice": advice,
        "reason": f"{what} = {p:.2f} {op} {threshold:.2f}",
        "probability": round(p, 6),
        "threshold": threshold,
        "note": RESEARCH_NOTE,
    }
