"""Referral advice from calibrated probabilities (what a screening programme acts on, not a class index).

Mappings (thresholds from ``RETINA_REFERRAL_*`` settings, defaults 0.5):

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

from collections.abc import Sequence
from typing import Any

import numpy as np

from backend.app.core.config import Settings
from retina.labels import DR_GRADES, OCT_CLASSES

RESEARCH_NOTE = "Research use only: not a medical device; a clinician must confirm any referral."

ADVICE: dict[str, str] = {
    "urgent_oct": "Urgent referral to a retina specialist: features of CNV or DME suspected.",
    "routine": "Routine referral to an ophthalmologist: drusen suspected.",
    "observation": "No referral suggested: routine observation.",
    "urgent_fundus": "Urgent referral to an ophthalmologist: proliferative diabetic retinopathy suspected.",
    "refer": "Refer to an ophthalmologist: referable (moderate or worse) diabetic retinopathy suspected.",
    "rescreen_12_months": "No referable diabetic retinopathy suspected: rescreen in 12 months.",
    "ungradable": "No assessment: the image is not gradable. Retake it (or refer for an in-person examination).",
}


def _sum(probs: np.ndarray, names: Sequence[str], wanted: Sequence[str]) -> float:
    return float(sum(probs[names.index(c)] for c in wanted))


def referral_for(task: str, class_names: Sequence[str], probs: np.ndarray, settings: Settings) -> dict[str, Any] | None:
    """``{level, advice, reason, probability, threshold, note}`` for one image's ``probs (K,)``; None if no policy."""
    names = list(class_names)
    s = settings
    if task == "oct" and sorted(names) == sorted(OCT_CLASSES):
        p_urgent = _sum(probs, names, ("CNV", "DME"))
        p_any = p_urgent + _sum(probs, names, ("DRUSEN",))
        if p_urgent >= s.referral_oct_urgent:
            return _ref("urgent", ADVICE["urgent_oct"], "P(CNV) + P(DME)", p_urgent, s.referral_oct_urgent, ">=")
        if p_any >= s.referral_oct_routine:
            return _ref(
                "routine", ADVICE["routine"], "P(CNV) + P(DME) + P(DRUSEN)", p_any, s.referral_oct_routine, ">="
            )
        return _ref(
            "observation",
            ADVICE["observation"],
            "P(CNV) + P(DME) + P(DRUSEN)",
            p_any,
            s.referral_oct_routine,
            "<",
        )
    if task == "fundus" and tuple(names) == tuple(DR_GRADES):
        p4 = float(probs[4])
        p_ref = float(probs[2:].sum())
        if p4 >= s.referral_fundus_urgent:
            return _ref("urgent", ADVICE["urgent_fundus"], "P(proliferative)", p4, s.referral_fundus_urgent, ">=")
        if p_ref >= s.referral_fundus_refer:
            return _ref("refer", ADVICE["refer"], "P(grade >= 2)", p_ref, s.referral_fundus_refer, ">=")
        return _ref(
            "rescreen_12_months",
            ADVICE["rescreen_12_months"],
            "P(grade >= 2)",
            p_ref,
            s.referral_fundus_refer,
            "<",
        )
    return None


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
