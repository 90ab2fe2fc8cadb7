"""Response models of the exam route (``POST /predict/exam``), apart from ``schemas.py`` to keep each file one job."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.app.schemas import ErrorResponse, PredictResponse, Referral

Eye = Literal["right", "left"]


class ExamImage(BaseModel):
    """One uploaded file of the exam and what the service made of it."""

    index: int = Field(description="0-based position in the upload.")
    filename: str | None = None
    eye: Eye
    laterality_source: Literal["form", "dicom", "filename"] = Field(
        description="Where the eye came from: the `laterality` form field, the DICOM header, or the file name."
    )
    kind: Literal["image", "volume"] = Field(
        description="`volume`: a multi-frame OCT DICOM (scored as /predict/volume)."
    )
    gradable: bool
    result: PredictResponse | None = Field(
        description="As /predict answers (a volume: its volume answer); null if refused."
    )
    volume: dict[str, Any] | None = Field(default=None, description="A volume's rule and frame counts.")
    error: ErrorResponse | None = Field(
        default=None, description="Why the file was refused (it counts as not gradable)."
    )

    model_config = ConfigDict(protected_namespaces=())


class ExamEye(BaseModel):
    """One eye's answer: its most urgent gradable image decides; none gradable -> `ungradable`."""

    eye: Eye
    images: list[int] = Field(description="Indices of this eye's files.")
    n_images: int
    n_gradable: int
    deciding_image: int | None = Field(description="Index of the image that decided the eye; null when ungradable.")
    gradable: bool
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None = Field(description="The deciding image's calibrated probabilities.")
    model: str | None
    referral: Referral = Field(
        description="The eye's referral, with its `headline` and `advice` (retina/referral.py's words): the deciding "
        "image's, or `ungradable` with the advice to retake or refer in person when no image of the eye is gradable."
    )

    model_config = ConfigDict(protected_namespaces=())


class ExamPatient(Referral):
    """The patient's referral: the most urgent eye's (its `level`, `headline`, `advice`; `reason` names the eye)."""

    deciding_eye: Eye


class ExamResponse(BaseModel):
    """An exam of one patient: the patient, each eye (right, left), every file in upload order."""

    rule: str = Field(description="The per-eye / per-patient rule's id.")
    rule_text: str = Field(description="The rule in words.")
    patient: ExamPatient
    eyes: list[ExamEye]
    images: list[ExamImage]
