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

Words: this module is the one author of every referral word a user reads. Per level a
:data:`HEADLINES` title and an :data:`ADVICE` sentence, the one :data:`DISCLAIMER` (and its short
form :data:`DISCLAIMER_SHORT` where 64 characters is all there is: DICOM titles, the PDF's header),
and the operating-point sentence (:func:`operating_point_text`). The API carries them; the UI, the
PDF and the DICOM results print what they are given and write none of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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


# ----------------------------------------------------------------------------- words

DISCLAIMER_SHORT = "Research use only, not a diagnosis"
DISCLAIMER = (
    f"{DISCLAIMER_SHORT}. RetinaScope is not a medical device: its models were trained on small public datasets, "
    "and a qualified clinician must review the image and decide on any referral."
)

# level -> the short title a screen or a page heads the advice with.
HEADLINES: dict[str, str] = {
    "urgent": "Urgent referral",
    "refer": "Referral advised",
    "routine": "Routine referral",
    "observation": "Observation",
    "rescreen_12_months": "Rescreen in 12 months",
    "ungradable": "Not gradable",
    "not_informative": "No advice (model not informative)",
}

ADVICE: dict[str, str] = {
    "urgent_oct": "Urgent referral to a retina specialist: features of CNV or DME suspected.",
    "routine": "Routine referral to an ophthalmologist: drusen suspected.",
    "observation": "No referral suggested: routine observation.",
    "urgent_fundus": "Urgent referral to an ophthalmologist: proliferative diabetic retinopathy suspected.",
    "refer": "Refer to an ophthalmologist: referable (moderate or worse) diabetic retinopathy suspected.",
    "rescreen_12_months": "No referable diabetic retinopathy suspected: rescreen in 12 months.",
    "ungradable": "No assessment: the image is not gradable. Retake it (or refer for an in-person examination).",
    "ungradable_eye": "No gradable image of this eye: retake the photos, or refer for an in-person eye examination. "
    "This is not a negative result.",
    "not_informative": "No advice: this model's validated accuracy is not distinguishable from chance.",
}

# (task, operating point) -> (the action, the probability compared with the point's threshold).
POINT_WORDS: dict[tuple[str, str], tuple[str, str]] = {
    ("fundus", "refer"): ("Refer", "P(grade >= 2)"),
    ("fundus", "urgent"): ("Urgent referral", "P(proliferative)"),
    ("oct", "urgent"): ("Urgent referral", "P(CNV) + P(DME)"),
    ("oct", "routine"): ("Routine referral", "P(CNV) + P(DME) + P(DRUSEN)"),
}
# (task, referral level) -> the operating point whose threshold decided that level (a level below a
# threshold is decided by the same point: rescreen by ``refer``, observation by ``routine``).
POINT_OF_LEVEL: dict[tuple[str, str], str] = {
    ("fundus", "urgent"): "urgent",
    ("fundus", "refer"): "refer",
    ("fundus", "rescreen_12_months"): "refer",
    ("oct", "urgent"): "urgent",
    ("oct", "routine"): "routine",
    ("oct", "observation"): "routine",
}


def headline(level: str) -> str:
    """The title of ``level`` (an unknown level: its code made readable, ``"n/a"`` -> ``"N/a"``)."""
    return HEADLINES.get(level, level.replace("_", " ").capitalize())


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
    """``{level, headline, advice, reason, probability, threshold, note}`` (:func:`referral_block`) for one image's
    ``probs (K,)`` in ``[0, 1]``; None if the model's classes have no policy.

    ``meta`` (the checkpoint's metadata) supplies the operating points and the informativeness.
    """
    names = list(class_names)
    if meta is not None and not informative(meta) and task in ("oct", "fundus"):
        why = "the model's validated balanced accuracy interval includes chance"
        return referral_block("not_informative", ADVICE["not_informative"], why)
    if task == "oct" and sorted(names) == sorted(OCT_CLASSES):
        t_urgent = threshold_for("referral_oct_urgent", settings, meta)
        t_routine = threshold_for("referral_oct_routine", settings, meta)
        p_urgent = _sum(probs, names, ("CNV", "DME"))
        p_any = p_urgent + _sum(probs, names, ("DRUSEN",))
        if p_urgent >= t_urgent:
            return _ref("urgent", ADVICE["urgent_oct"], _score("oct", "urgent"), p_urgent, t_urgent, ">=")
        if p_any >= t_routine:
            return _ref("routine", ADVICE["routine"], _score("oct", "routine"), p_any, t_routine, ">=")
        return _ref("observation", ADVICE["observation"], _score("oct", "routine"), p_any, t_routine, "<")
    if task == "fundus" and tuple(names) == tuple(DR_GRADES):
        t_urgent = threshold_for("referral_fundus_urgent", settings, meta)
        t_refer = threshold_for("referral_fundus_refer", settings, meta)
        p4 = float(probs[4])
        p_ref = float(p_grade_at_least(probs, 2))
        if p4 >= t_urgent and p_ref >= t_refer:
            return _ref("urgent", ADVICE["urgent_fundus"], _score("fundus", "urgent"), p4, t_urgent, ">=")
        if p_ref >= t_refer:
            return _ref("refer", ADVICE["refer"], _score("fundus", "refer"), p_ref, t_refer, ">=")
        return _ref("rescreen_12_months", ADVICE["rescreen_12_months"], _score("fundus", "refer"), p_ref, t_refer, "<")
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
    return referral_block("ungradable", ADVICE["ungradable"], "; ".join(reasons) or "image quality")


def referral_block(
    level: str, advice: str, reason: str, probability: float | None = None, threshold: float | None = None
) -> dict[str, Any]:
    """The referral block every answer carries: ``level``, its :func:`headline`, ``advice``, ``reason``,
    ``probability`` and ``threshold`` (None when no threshold decided it) and the :data:`DISCLAIMER` as ``note``."""
    return {
        "level": level,
        "headline": headline(level),
        "advice": advice,
        "reason": reason,
        "probability": probability,
        "threshold": threshold,
        "note": DISCLAIMER,
    }


# What stands where a referral would (the PDF's box, a DICOM SR finding) for a model whose classes have no policy.
NO_POLICY: Mapping[str, Any] = {
    "level": "n/a",
    "headline": "No referral advice",
    "advice": "No referral advice: this model's classes have no referral policy.",
    "reason": "",
    "probability": None,
    "threshold": None,
    "note": DISCLAIMER,
}


def _score(task: str, point: str) -> str:
    return POINT_WORDS[(task, point)][1]


def _ref(level: str, advice: str, what: str, p: float, threshold: float, op: str) -> dict[str, Any]:
    return referral_block(level, advice, f"{what} = {p:.2f} {op} {threshold:.2f}", round(p, 6), threshold)


# ----------------------------------------------------------------------------- operating-point sentences


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rate(stats: Mapping[str, Any], name: str) -> str | None:
    """``sensitivity 0.87 [0.80, 0.92]`` from an operating point's ``fit`` or check; None when absent."""
    if not _finite(stats.get(name)):
        return None
    ci = stats.get(f"{name}_ci95")
    text = f"{name} {stats[name]:.2f}"
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_finite(c) for c in ci):
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def rates_text(stats: object) -> str:
    """``sensitivity 0.87 [0.80, 0.92], specificity 0.55 [0.51, 0.59] (n = 742, 163 positive)`` (95 % intervals
    in brackets) of one evaluation at a threshold; empty when it has neither figure (hand-edited or NaN)."""
    if not isinstance(stats, Mapping):
        return ""
    text = ", ".join(r for r in (_rate(stats, "sensitivity"), _rate(stats, "specificity")) if r)
    n, pos = stats.get("n"), stats.get("n_positive")
    if text and _finite(n):
        text += f" (n = {n:g}" + (f", {pos:g} positive)" if _finite(pos) else ")")
    return text


def operating_point_text(task: str, name: str, point: Mapping[str, Any] | None, served: float | None) -> str:
    """The sentence of one referral threshold: the rule at the ``served`` threshold and, when ``point`` (the
    checkpoint's or a site profile's operating point ``{threshold, fitted_on, fit, checks}``) has figures, where
    it was chosen and its sensitivity / specificity there and on its check sets; empty when ``served`` is None.

    ``Refer when P(grade >= 2) >= 0.230, chosen on <split>: sensitivity 0.87 [0.80, 0.92], specificity
    0.55 [0.51, 0.59] (n = 742, 163 positive). At this threshold on idrid: sensitivity ...``. A served
    threshold other than the point's is a ``RETINA_REFERRAL_*`` setting, and the sentence says so.
    """
    if served is None or not _finite(served):
        return ""
    action, score = POINT_WORDS.get((task, name), (name.replace("_", " ").capitalize(), ""))
    head = f"{action} when {score or (point or {}).get('score') or 'P'} >= {served:.3f}"
    if not isinstance(point, Mapping) or not _finite(point.get("threshold")):
        return f"{head} (service default or setting; no validated operating point in the checkpoint)."
    fitted = float(point["threshold"])
    where = f" chosen on {point['fitted_on']}" if point.get("fitted_on") else ""
    if abs(float(served) - fitted) > 1e-9:
        setting = f" RETINA_REFERRAL_{task.upper()}_{name.upper()}" if (task, name) in POINT_WORDS else ""
        text = f"{head} (service setting{setting}), overriding the operating point {fitted:.3f}{where}"
        at = f"At {fitted:.3f}"
    else:
        text = head + (f",{where}" if where else "")
        at = "At this threshold"
    if fit := rates_text(point.get("fit")):
        text += f": {fit}"
    checks = [f"on {c}: {r}" for c, stats in (point.get("checks") or {}).items() if (r := rates_text(stats))]
    if checks:
        text += f". {at} " + "; ".join(checks)
    return text + "."


def decided_by_text(task: str, referral: Mapping[str, Any], points: Mapping[str, Any]) -> str:
    """:func:`operating_point_text` of the point whose threshold decided ``referral`` (a rescreen answer: the
    refer point); empty when no threshold decided it (ungradable, not informative, no policy)."""
    name = POINT_OF_LEVEL.get((task, str(referral.get("level"))))
    if name is None:
        return ""
    point = points.get(name) if isinstance(points, Mapping) else None
    return operating_point_text(task, name, point if isinstance(point, Mapping) else None, referral.get("threshold"))


def site_profile_text(profile: str, task: str, name: str, point: Mapping[str, Any] | None, served: float) -> str:
    """What a default site profile changes about one point: ``Without site=, the site profile 'clinic' decides:
    refer when ...`` (:func:`operating_point_text` of the profile's point)."""
    sentence = operating_point_text(task, name, point, served)
    return f"Without site=, the site profile {profile!r} decides: {sentence[:1].lower()}{sentence[1:]}"
