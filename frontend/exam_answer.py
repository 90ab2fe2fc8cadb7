"""The answer of ``POST /predict/exam`` as typed, frozen objects (backend ``ExamResponse`` and its parts).

The patient's and each eye's referral carry the backend's ``headline`` and ``advice``; the exam page prints
them and computes nothing. Field names mirror the backend's OpenAPI (``tests/frontend/test_openapi_contract.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from frontend.answers import Prediction, Referral


@dataclass(frozen=True)
class ExamPatient(Referral):
    """The patient's referral (backend ``ExamPatient``): the most urgent eye's, and which eye that is."""

    deciding_eye: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ExamPatient:
        return cls(**cls.fields_from_json(d), deciding_eye=str(d.get("deciding_eye") or ""))


@dataclass(frozen=True)
class ExamEye:
    """One eye's answer (backend ``ExamEye``): its most urgent gradable image decides.

    ``deciding_image`` is ``None`` (and ``label``, ``confidence`` too) when no image of the eye was gradable.
    """

    eye: str
    n_images: int
    n_gradable: int
    deciding_image: int | None
    gradable: bool
    label: str | None
    confidence: float | None
    referral: Referral

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ExamEye:
        return cls(
            eye=str(d["eye"]),
            n_images=int(d["n_images"]),
            n_gradable=int(d["n_gradable"]),
            deciding_image=None if d.get("deciding_image") is None else int(d["deciding_image"]),
            gradable=bool(d.get("gradable", False)),
            label=None if d.get("label") is None else str(d["label"]),
            confidence=None if d.get("confidence") is None else float(d["confidence"]),
            referral=Referral.from_json(d["referral"]),
        )


@dataclass(frozen=True)
class ErrorBody:
    """A refusal as the backend words it (backend ``ErrorResponse``): ``{"error": code, "detail": text}``."""

    error: str
    detail: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ErrorBody:
        return cls(error=str(d["error"]), detail=str(d.get("detail") or ""))


@dataclass(frozen=True)
class ExamImage:
    """One uploaded file of the exam (backend ``ExamImage``): its eye, where that came from, and its answer
    (``result``, as /predict answers) or why it was refused (``error``)."""

    index: int
    filename: str | None
    eye: str
    laterality_source: str
    kind: str
    gradable: bool
    result: Prediction | None = None
    error: ErrorBody | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ExamImage:
        result, error = d.get("result"), d.get("error")
        return cls(
            index=int(d["index"]),
            filename=None if d.get("filename") is None else str(d["filename"]),
            eye=str(d["eye"]),
            laterality_source=str(d["laterality_source"]),
            kind=str(d["kind"]),
            gradable=bool(d["gradable"]),
            result=None if not result else Prediction.from_json(result),
            error=None if not error else ErrorBody.from_json(error),
        )


@dataclass(frozen=True)
class ExamAnswer:
    """``POST /predict/exam`` result: the patient, each eye (right, left), every file in upload order."""

    rule: str
    rule_text: str
    patient: ExamPatient
    eyes: tuple[ExamEye, ...]
    images: tuple[ExamImage, ...]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ExamAnswer:
        return cls(
            rule=str(d.get("rule") or ""),
            rule_text=str(d.get("rule_text") or ""),
            patient=ExamPatient.from_json(d["patient"]),
            eyes=tuple(ExamEye.from_json(e) for e in d["eyes"]),
            images=tuple(ExamImage.from_json(i) for i in d["images"]),
        )
