"""A screening exam: several images of one patient -> one answer per eye and one for the patient.

Screening programmes and the autonomous systems in them (IDx-DR, EyeArt) photograph each eye
(usually twice) and report per eye and per patient. The rule served here:

* **Per eye: the most urgent gradable image decides.** Of the eye's gradable images (photos, OCT
  B-scans, OCT volumes' volume answers), the one whose referral level is the most urgent decides
  the eye; between images at the same level, the one with the higher referral probability (the
  probability its level was decided on, e.g. ``P(grade >= 2)``). The eye's level, advice, label
  and probabilities are that image's, so they never contradict each other. For DR graded on
  two photos of one eye this is the maximum of the photos' referral probabilities: a lesion
  visible on one field (macula-centred or disc-centred) and outside the other must not be
  averaged away, which is also why graders read an eye as its worst field.
* **An eye without a gradable image is ``ungradable``** ("retake, or refer for an in-person
  examination"), whether its images were ungradable, refused, or there were none: never a
  silent "no referral".
* **The patient's answer is the most urgent eye's**, with ``ungradable`` ranked below any
  referral and above "no referral": a referable eye refers the patient even when the other
  eye is ungradable (the visit is needed anyway), but an ungradable eye turns the other eye's
  "rescreen in 12 months" into "retake / refer in person".

Urgency order (:data:`URGENCY`): ``urgent`` > ``refer`` = ``routine`` > ``ungradable`` >
``rescreen_12_months`` = ``observation`` > ``not_informative``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from retina.assessment import Assessment
from retina.laterality import EYES, Eye
from retina.referral import ADVICE, referral_block

ItemKind = Literal["image", "volume"]

URGENCY: dict[str, int] = {
    "urgent": 5,
    "refer": 4,
    "routine": 4,
    "ungradable": 3,
    "rescreen_12_months": 2,
    "observation": 2,
    "not_informative": 1,
}
RULE = "most_urgent_gradable_image"
RULE_TEXT = (
    "each eye: its most urgent gradable image decides (same level: the higher referral probability); "
    "an eye with no gradable image is ungradable; the patient: the most urgent eye "
    "(a referral outranks ungradable, ungradable outranks no referral)"
)
EXAM_HEADLINE: dict[str, str] = {
    "right": "Right eye (OD)",
    "left": "Left eye (OS)",
}


@dataclass(frozen=True)
class ExamItem:
    """One file of the exam: its eye and what the service made of it.

    Attributes:
        index: 0-based position in the upload.
        filename: as uploaded (echoed to the caller only; never audited or printed).
        eye: ``right`` / ``left``.
        laterality_source: ``form``, ``dicom`` or ``filename``.
        kind: ``image`` (one photo or B-scan) or ``volume`` (a multi-frame OCT DICOM).
        assessment: the image's (or the volume's) assessment; None when refused (``error``).
        error: ``(code, detail)`` of a refusal (e.g. ``not_retinal_image``); such a file counts as not gradable.
        extra: the volume's own body (``VolumeAssessment.to_dict()``) for a volume, else None.
    """

    index: int
    filename: str | None
    eye: Eye
    laterality_source: str
    kind: ItemKind
    assessment: Assessment | None
    error: tuple[str, str] | None = None
    extra: Mapping[str, Any] | None = None

    @property
    def gradable(self) -> bool:
        return self.assessment is not None and self.assessment.gradable

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "index": self.index,
            "filename": self.filename,
            "eye": self.eye,
            "laterality_source": self.laterality_source,
            "kind": self.kind,
            "gradable": self.gradable,
            "result": None,
            "volume": None,
            "error": None,
        }
        if self.assessment is not None:
            body["result"] = self.assessment.to_dict()
        if self.extra is not None:
            body["volume"] = {k: v for k, v in self.extra.items() if k in ("rule", "n_frames", "n_graded")}
        if self.error is not None:
            body["error"] = {"error": self.error[0], "detail": self.error[1]}
        return body


@dataclass(frozen=True)
class EyeResult:
    """One eye's answer: its images (indices into the exam), the deciding one and the referral."""

    eye: Eye
    images: tuple[int, ...]
    n_gradable: int
    deciding: int | None
    label: str | None
    confidence: float | None
    probabilities: Mapping[str, float] | None
    model: str | None
    referral: Mapping[str, Any]

    @property
    def level(self) -> str:
        return str(self.referral["level"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "eye": self.eye,
            "images": list(self.images),
            "n_images": len(self.images),
            "n_gradable": self.n_gradable,
            "deciding_image": self.deciding,
            "gradable": self.deciding is not None,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": None if self.probabilities is None else dict(self.probabilities),
            "model": self.model,
            "referral": dict(self.referral),
        }


@dataclass(frozen=True)
class ExamAssessment:
    """The exam's answer: every item, each eye (right, left), and the patient's referral (the most urgent eye's)."""

    items: tuple[ExamItem, ...]
    eyes: tuple[EyeResult, ...]
    patient: Mapping[str, Any]
    deciding_eye: Eye

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": RULE,
            "rule_text": RULE_TEXT,
            "patient": {**dict(self.patient), "deciding_eye": self.deciding_eye},
            "eyes": [e.to_dict() for e in self.eyes],
            "images": [i.to_dict() for i in self.items],
        }


def urgency(level: str | None) -> int:
    """Rank of a referral level (higher = act sooner); unknown or None -> 0."""
    return URGENCY.get(level or "", 0)


def _key(item: ExamItem) -> tuple[int, float]:
    assert item.assessment is not None
    ref = item.assessment.referral or {}
    p = ref.get("probability")
    return urgency(ref.get("level")), float(p) if p is not None else -1.0


def ungradable_eye(reasons: Sequence[str]) -> dict[str, Any]:
    """The referral block of an eye with no gradable image (advice: ``retina.referral.ADVICE["ungradable_eye"]``)."""
    return referral_block("ungradable", ADVICE["ungradable_eye"], "; ".join(reasons) or "no gradable image of this eye")


def assess_eye(eye: Eye, items: Sequence[ExamItem]) -> EyeResult:
    """One eye from its items (all of this eye) by the rule of the module docstring."""
    mine = [i for i in items if i.eye == eye]
    graded = [i for i in mine if i.gradable and i.assessment is not None and i.assessment.referral is not None]
    indices = tuple(i.index for i in mine)
    if not graded:
        if not mine:
            reasons = ["no image of this eye was sent"]
        else:
            reasons = [f"{len(mine)} image(s) of this eye, none gradable"]
            for i in mine:
                ref = (i.assessment.referral or {}) if i.assessment is not None else {}
                why = i.error[0] if i.error else str(ref.get("reason") or "not gradable")
                reasons.append(f"image {i.index}: {why}")
        return EyeResult(eye, indices, 0, None, None, None, None, None, ungradable_eye(reasons))
    best = max(graded, key=_key)  # max() keeps the first of equals: the earlier image in upload order
    a = best.assessment
    assert a is not None and a.referral is not None
    referral = dict(a.referral)
    referral["reason"] = f"image {best.index} (the most urgent of {len(graded)} gradable): {referral['reason']}"
    return EyeResult(eye, indices, len(graded), best.index, a.label, a.confidence, a.probabilities, a.model, referral)


def assess_exam(items: Sequence[ExamItem]) -> ExamAssessment:
    """Items (any order, each with its eye) -> per-eye answers (right, left) and the patient's referral."""
    eyes = tuple(assess_eye(e, items) for e in EYES)
    # max() keeps the first of equals: the right eye on a tie, as clinical forms list OD first.
    worst = max(eyes, key=lambda e: (urgency(e.level), e.referral.get("probability") or 0.0))
    patient = dict(worst.referral)
    patient["reason"] = f"{EXAM_HEADLINE[worst.eye]}: {worst.referral['reason']}"
    return ExamAssessment(tuple(sorted(items, key=lambda i: i.index)), eyes, patient, worst.eye)
