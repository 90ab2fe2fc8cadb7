"""The service's answers as DICOM objects (``?format=dicom-sr`` and ``/report?format=dicom``).

The answer is computed exactly as the JSON one (the same pipeline call on the same bytes, read
once and replayed); ``retina.dicom_results`` writes it as a TID 1500 Structured Report or wraps
the PDF as Encapsulated PDF. When the upload was DICOM the result keeps its Patient and Study
modules and references it; otherwise it opens a new study. Building runs on the CAM pool (off
the event loop), as the PDF does.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from backend.app.services.errors import ServiceError
from backend.app.services.exam import ExamOutcome
from backend.app.services.intake import Replay, Upload, read_upload
from backend.app.services.pipeline import Pipeline, Report
from backend.app.services.runtime import run_in
from retina.assessment import Assessment
from retina.dicom import is_dicom
from retina.dicom_results import ModelId, encapsulated_pdf, source_header, structured_report, to_bytes
from retina.exam_dicom import NO_POLICY, exam_encapsulated_pdf, exam_structured_report, finding
from retina.laterality import from_dicom
from retina.volume import VolumeAssessment

DICOM_MEDIA_TYPE = "application/dicom"


@dataclass(frozen=True)
class DicomAnswer:
    """A result object as Part 10 bytes, with the assessment it encodes (for the route's headers)."""

    data: bytes
    assessment: Assessment
    sop_instance_uid: str


P = ParamSpec("P")
R = TypeVar("R")


def _unwritable(e: Exception) -> ServiceError:
    """422 for a DICOM input whose patient/study data highdicom cannot copy into a result object.

    Only the exception's type is said: its message may quote the identifiers.
    """
    return ServiceError(
        422,
        "invalid_dicom_header",
        f"the DICOM input's patient/study data cannot be written into a result object ({type(e).__name__}); "
        "ask for the JSON answer, or send the image without its DICOM header",
    )


def _writable(build: Callable[P, R]) -> Callable[P, R]:
    """``build`` with highdicom's refusals of a DICOM input's patient/study data answered 422 (:func:`_unwritable`)."""

    @functools.wraps(build)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return build(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise _unwritable(e) from None

    return checked


@_writable
def _single_sr(result: Assessment, data: bytes, name: str) -> tuple[bytes, str]:
    """SR of one image's (or volume's) assessment; the source referenced when ``data`` is DICOM (CAM pool)."""
    header = source_header(data) if is_dicom(data) else None
    sources = [header] if header is not None else []
    eye = from_dicom(data) if header is not None else None
    uids = [str(header.SOPInstanceUID)] if header is not None else []
    models = [ModelId(result.model, result.model_version)]
    advice = str((result.referral or NO_POLICY)["advice"])
    sr = structured_report(
        [finding(name, result, eye, uids)],
        sources,
        models,
        fallback_key=hashlib.sha256(data).hexdigest(),
        summary=advice,
    )
    return to_bytes(sr), str(sr.SOPInstanceUID)


async def predict_sr(pipeline: Pipeline, upload: Upload, model: str, site: str | None = None) -> DicomAnswer:
    """/predict?format=dicom-sr: the same answer as /predict (``site``: its site profile), as a Structured Report."""
    data = await read_upload(upload, pipeline.settings.max_upload_bytes)
    result = await pipeline.classify(Replay(upload.filename, data), model, site=site)
    sr, uid = await run_in(pipeline.cam_pool, _single_sr, result, data, "image")
    return DicomAnswer(sr, result, uid)


async def volume_sr(pipeline: Pipeline, upload: Upload, model: str) -> tuple[DicomAnswer, VolumeAssessment]:
    """/predict/volume?format=dicom-sr: the volume's answer (not every B-scan) as a Structured Report."""
    data = await read_upload(upload, pipeline.settings.max_volume_upload_bytes)
    scored = await pipeline.classify_volume(Replay(upload.filename, data), model)
    sr, uid = await run_in(pipeline.cam_pool, _single_sr, scored.volume, data, "OCT volume")
    return DicomAnswer(sr, scored.volume, uid), scored


@_writable
def _pdf_dicom(pdf: bytes, data: bytes, result: Assessment) -> tuple[bytes, str]:
    header = source_header(data) if is_dicom(data) else None
    models = [ModelId(result.model, result.model_version)]
    ds = encapsulated_pdf(
        pdf, [header] if header is not None else [], models, fallback_key=hashlib.sha256(data).hexdigest()
    )
    return to_bytes(ds), str(ds.SOPInstanceUID)


async def report_dicom(
    pipeline: Pipeline,
    upload: Upload,
    model: str,
    method: str,
    alpha: float,
    frame: int | None,
    site: str | None = None,
) -> tuple[Report, DicomAnswer]:
    """/report?format=dicom: the same PDF as /report, as an Encapsulated PDF instance."""
    limit = pipeline.settings.max_volume_upload_bytes if frame is not None else pipeline.settings.max_upload_bytes
    data = await read_upload(upload, limit)
    made = await pipeline.report(Replay(upload.filename, data), model, method, alpha, frame, site)
    dcm, uid = await run_in(pipeline.cam_pool, _pdf_dicom, made.pdf, data, made.assessment)
    return made, DicomAnswer(dcm, made.assessment, uid)


@_writable
def exam_sr(outcome: ExamOutcome) -> bytes:
    """SR of an exam (``retina.exam_dicom``; CAM pool)."""
    return to_bytes(exam_structured_report(outcome.exam, outcome.sources, outcome.sha256))


@_writable
def exam_pdf_dicom(pdf: bytes, outcome: ExamOutcome) -> bytes:
    """The exam's PDF report as Encapsulated PDF, in the inputs' study (CAM pool)."""
    return to_bytes(exam_encapsulated_pdf(pdf, outcome.exam, outcome.sources, outcome.sha256))
