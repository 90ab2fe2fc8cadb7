"""The backend's answers about images as typed, frozen objects: what ``client.py`` returns and the pages read.

Each class mirrors one schema of the backend's OpenAPI (``/openapi.json``) field by field, under the
same names; ``tests/frontend/test_openapi_contract.py`` checks every field here against the real
backend's schema. No HTTP and no Streamlit here. Each ``from_json`` tolerates what an older backend
leaves out (a missing field takes its default) and raises ``KeyError``/``TypeError``/``ValueError``
on a body it cannot read; the client turns those into ``BackendError("bad_response")``.

The words a reader acts on (a referral's ``headline``, ``advice`` and ``note``, a model's ``disclaimer``
and ``operating_point_text``) are carried as the backend wrote them; the UI never rewrites them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from frontend.errors import BackendError

# Field metadata: the field is not a key of the body but parsed from the whole body (a volume's own
# prediction shares its keys with the volume answer).
SAME_BODY = {"same_body": True}


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _floats(d: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in (d or {}).items()}


@dataclass(frozen=True)
class Referral:
    """What to do with the result (backend ``Referral``), decided from the calibrated probabilities.

    Attributes:
        level: ``urgent``, ``routine``, ``observation`` (OCT); ``urgent``, ``refer``,
            ``rescreen_12_months`` (fundus); ``ungradable`` (no assessment); ``not_informative`` (the
            model's validated accuracy is not distinguishable from chance: no advice). Unknown levels are kept.
        headline: the level's short title, as the backend words it (empty from an older backend).
        advice: one sentence for the reader.
        reason: the rule that fired, e.g. ``P(grade >= 2) = 0.71 >= 0.50`` (the gate's reasons when ungradable).
        probability: the probability compared with ``threshold``, both in [0, 1]; ``None`` when ungradable
            or not informative.
        note: the research-use disclaimer that must be shown beside the advice.
        profile: the site profile whose operating points decided it, or ``default``.
    """

    level: str
    headline: str = ""
    advice: str = ""
    reason: str = ""
    probability: float | None = None
    threshold: float | None = None
    note: str = ""
    profile: str = "default"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Referral:
        return cls(**cls.fields_from_json(d))

    @staticmethod
    def fields_from_json(d: Mapping[str, Any]) -> dict[str, Any]:
        """The referral's fields of body ``d`` (also the head of an exam's patient block, ``ExamPatient``)."""
        return {
            "level": str(d["level"]),
            "headline": str(d.get("headline") or ""),
            "advice": str(d.get("advice") or ""),
            "reason": str(d.get("reason") or ""),
            "probability": _opt_float(d.get("probability")),
            "threshold": _opt_float(d.get("threshold")),
            "note": str(d.get("note") or ""),
            "profile": str(d.get("profile") or "default"),
        }


@dataclass(frozen=True)
class GateInfo:
    """What the backend's image gate found (backend ``GateInfo``).

    Attributes:
        modality: ``oct``, ``fundus`` or ``other``.
        gradable: ``False`` when the image is too dark, blurred, over-exposed or incomplete to grade.
        reasons: why it is not gradable (empty when gradable).
        probabilities: the gate's probability of each kind (``oct``, ``fundus``, ``other``), in [0, 1].
        quality: quality measures of the detected modality.
        quality_grade: the learned quality grade of a fundus photo (``Good``, ``Usable``, ``Reject``), else None.
    """

    modality: str
    gradable: bool = True
    reasons: tuple[str, ...] = ()
    probabilities: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    quality_grade: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GateInfo:
        return cls(
            modality=str(d.get("modality") or "other"),
            gradable=bool(d.get("gradable", True)),
            reasons=tuple(str(r) for r in d.get("reasons") or ()),
            probabilities=_floats(d.get("probabilities")),
            quality=_floats(d.get("quality")),
            quality_grade=str(d["quality_grade"]) if d.get("quality_grade") else None,
        )


@dataclass(frozen=True)
class Prediction:
    """``POST /predict`` result (backend ``PredictResponse``).

    ``probabilities`` are in [0, 1], sum to 1 and are keyed by class name. When ``gradable`` is
    ``False`` the backend gives no diagnosis: ``label``, ``confidence`` and ``probabilities`` are
    ``None`` and :attr:`reasons` says why. ``model`` and ``task`` name the model that answered
    (also for ``?model=auto``).
    """

    model: str
    model_version: str
    task: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    inference_ms: float | None = None
    derived: dict[str, float] | None = None
    gradable: bool = True
    referral: Referral | None = None
    gate: GateInfo | None = None

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the image is not gradable: the gate's reasons (empty when gradable or unknown)."""
        return self.gate.reasons if self.gate else ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Prediction:
        derived = d.get("derived")
        gradable = bool(d.get("gradable", True))
        probs = d.get("probabilities")
        if gradable and (d.get("label") is None or d.get("confidence") is None or probs is None):
            # A graded answer without a diagnosis is a broken contract, not an ungradable image.
            raise ValueError("a gradable prediction without label, confidence or probabilities")
        referral, gate = d.get("referral"), d.get("gate")
        return cls(
            model=str(d["model"]),
            model_version=str(d.get("model_version") or ""),
            task=str(d.get("task") or ""),
            label=None if d.get("label") is None else str(d["label"]),
            confidence=_opt_float(d.get("confidence")),
            probabilities=None if probs is None else _floats(probs),
            inference_ms=_opt_float(d.get("inference_ms")),
            derived=None if not derived else _floats(derived),
            gradable=gradable,
            referral=None if not referral else Referral.from_json(referral),
            gate=None if not gate else GateInfo.from_json(gate),
        )


@dataclass(frozen=True)
class VolumeFrame:
    """One B-scan of a ``/predict/volume`` answer: ``graded`` (own label and probabilities) or skipped."""

    index: int
    status: str
    label: str | None
    probabilities: dict[str, float] | None
    reasons: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, f: Mapping[str, Any]) -> VolumeFrame:
        return cls(
            index=int(f["index"]),
            status=str(f["status"]),
            label=None if f.get("label") is None else str(f["label"]),
            probabilities=None if f.get("probabilities") is None else _floats(f["probabilities"]),
            reasons=tuple(str(r) for r in f.get("reasons") or ()),
        )


@dataclass(frozen=True)
class VolumeResult:
    """``POST /predict/volume`` result (backend ``VolumeResponse``): the volume's answer as a
    :class:`Prediction` (read from the same body), then every B-scan.

    ``deciding_frames``: 0-based indices of the B-scans that drove the volume label, highest first.
    """

    prediction: Prediction = field(metadata=SAME_BODY)
    rule: str
    rule_text: str
    n_frames: int
    n_graded: int
    n_ungradable: int
    n_not_oct: int
    needed_graded: int
    deciding_frames: tuple[int, ...]
    frames: tuple[VolumeFrame, ...]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VolumeResult:
        frames = tuple(VolumeFrame.from_json(f) for f in d["frames"])
        if [f.index for f in frames] != list(range(int(d["n_frames"]))):
            raise ValueError("the volume's frames are not 0..n_frames-1 in order")
        return cls(
            prediction=Prediction.from_json(d),
            rule=str(d.get("rule") or ""),
            rule_text=str(d.get("rule_text") or ""),
            n_frames=int(d["n_frames"]),
            n_graded=int(d["n_graded"]),
            n_ungradable=int(d.get("n_ungradable") or 0),
            n_not_oct=int(d.get("n_not_oct") or 0),
            needed_graded=int(d.get("needed_graded") or 0),
            deciding_frames=tuple(int(i) for i in d.get("deciding_frames") or ()),
            frames=frames,
        )


@dataclass(frozen=True)
class CamResult:
    """``POST /gradcam?format=json`` result (backend ``GradcamResponse``) with decoded PNG bytes.

    ``overlay_png`` is the heatmap blended over the image as the model saw it (or upsampled to
    the upload's size with ``size=original``); ``heatmap_png`` is the colour-mapped heatmap alone.
    """

    label: str
    confidence: float
    probabilities: dict[str, float]
    target: str
    method: str
    overlay_png: bytes
    heatmap_png: bytes | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CamResult:
        def png(key: str) -> bytes | None:
            raw = d.get(key)
            if not raw:
                return None
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise BackendError("bad_response", f"the backend sent an invalid {key}") from None

        overlay = png("overlay_png")
        if overlay is None:
            raise BackendError("bad_response", "the backend sent no overlay image")
        return cls(
            label=str(d["label"]),
            confidence=float(d["confidence"]),
            probabilities=_floats(d.get("probabilities")),
            target=str(d.get("target") or d["label"]),
            method=str(d.get("method") or ""),
            overlay_png=overlay,
            heatmap_png=png("heatmap_png"),
        )
