"""The service's answers as DICOM objects (``?format=dicom-sr`` and ``/report?format=dicom``).

The answer is computed exactly as the JSON one (the same pipeline call on the same bytes, read
once and replayed); ``retina.dicom_results`` writes it as a TID 1500 Structured Report or wraps
the PDF as Encapsulated PDF. When the upload was DICOM the result keeps its Patient and Study
modules and references it; otherwise it opens a new study. Building runs on the CAM pool (off
the event loop), as the PDF does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from backend.app.services.exam import ExamOutcome
from backend.app.services.intake import Upload, read_upload
from backend.app.services.pipeline import Pipeline, Report
from backend.app.services.pipeline import _Replay as Replay
from backend.app.services.runtime import run_in
from retina.assessment import Assessment
from retina.dicom import is_dicom
from retina.dicom_results import Finding, ModelId, encapsulated_pdf, source_header, structured_report, to_bytes
from retina.exam import EXAM_HEADLINE
from retina.laterality import from_dicom
from retina.volume import VolumeAssessment

DICOM_MEDIA_TYPE = "application/dicom"
_NO_POLICY = {"level": "n/a", "advice": "no referral policy for this model"}


@dataclass(frozen=True)
class DicomAnswer:
    """A result object as Part 10 bytes, with the assessment it encodes (for the route's headers)."""

    data: bytes
    assessment: Assessment
    sop_instance_uid: str


def finding(name: str, result: Assessment, eye: str | None, sources: Sequence[str] = ()) -> Finding:
    """One assessment (image, volume or eye) as an SR finding."""
    ref = result.referral or _NO_POLICY
    probs = dict(result.probabilities) if result.probabilities is not None else None
    model = ModelId(result.model, result.model_version)
    return Finding(name, model, eye, result.label, probs, str(ref["level"]), str(ref["advice"]), tuple(sources))


def _single_sr(result: Assessment, data: bytes, name: str) -> tuple[bytes, str]:
    """SR of one image's (or volume's) assessment; the source referenced when ``data`` is DICOM (CAM pool)."""
    header = source_header(data) if is_dicom(data) else None
    sources = [header] if header is not None else []
    eye = from_dicom(data) if header is not None else None
    uids = [str(header.SOPInstanceUID)] if header is not None else []
    models = [ModelId(result.model, result.model_version)]
    advice = str((result.referral or _NO_POLICY)["advice"])
    sr = structured_report(
        [finding(name, result, eye, uids)],
        sources,
        models,
        fallback_key=hashlib.sha256(data).hexdigest(),
        summary=advice,
    )
    return to_bytes(sr), str(sr.SOPInstanceUID)


async def predict_sr(pipeline: Pipeline, upload: Upload, model: str) -> DicomAnswer:
    """/predict?format=dicom-sr: the same answer as /predict, as a Structured Report."""
    data = await read_upload(upload, pipeline.settings.max_upload_bytes)
    result = await pipeline.classify(Replay(upload.filename, data), model)
    sr, uid = await run_in(pipeline.cam_pool, _single_sr, result, data, "image")
    return DicomAnswer(sr, result, uid)


async def volume_sr(pipeline: Pipeline, upload: Upload, model: str) -> tuple[DicomAnswer, VolumeAssessment]:
    """/predict/volume?format=dicom-sr: the volume's answer (not every B-scan) as a Structured Report."""
    data = await read_upload(upload, pipeline.settings.max_volume_upload_bytes)
    scored = await pipeline.classify_volume(Replay(upload.filename, data), model)
    sr, uid = await run_in(pipeline.cam_pool, _single_sr, scored.volume, data, "OCT volume")
    return DicomAnswer(sr, scored.volume, uid), scored


def _pdf_dicom(pdf: bytes, data: bytes, result: Assessment) -> tuple[bytes, str]:
    header = source_header(data) if is_dicom(data) else None
    models = [ModelId(result.model, result.model_version)]
    ds = encapsulated_pdf(
        pdf, [header] if header is not None else [], models, fallback_key=hashlib.sha256(data).hexdigest()
    )
    return to_bytes(ds), str(ds.SOPInstanceUID)


async def report_dicom(
    pipeline: Pipeline, upload: Upload, model: str, method: str, alpha: float, frame: int | None
) -> tuple[Report, DicomAnswer]:
    """/report?format=dicom: the same PDF as /report, as an Encapsulated PDF instance."""
    limit = pipeline.settings.max_volume_upload_bytes if frame is not None else pipeline.settings.max_upload_bytes
    data = await read_upload(upload, limit)
    made = await pipeline.report(Replay(upload.filename, data), model, method, alpha, frame)
    dcm, uid = await run_in(pipeline.cam_pool, _pdf_dicom, made.pdf, data, made.assessment)
    return made, DicomAnswer(dcm, made.assessment, uid)


def exam_models(outcome: ExamOutcome) -> list[ModelId]:
    """The distinct models that scored the exam's images, in first-use order."""
    seen: dict[tuple[str, str], ModelId] = {}
    for item in outcome.exam.items:
        if item.assessment is not None:
            m = ModelId(item.assessment.model, item.assessment.model_version)
            seen.setdefault((m.name, m.version), m)
    return list(seen.values())


def _exam_sources(outcome: ExamOutcome) -> list[Dataset]:
    """The DICOM inputs of the exam's first study: a result joins one study, the first DICOM input's."""
    headers = [outcome.sources[i] for i in sorted(outcome.sources)]
    if not headers:
        return []
    study = headers[0].StudyInstanceUID
    return [h for h in headers if h.StudyInstanceUID == study]


def exam_sr(outcome: ExamOutcome) -> bytes:
    """SR of an exam: every scored image, each eye (with its deciding image's model) and the patient (CAM pool)."""
    sources = _exam_sources(outcome)
    known = {str(s.SOPInstanceUID) for s in sources}
    uid_of = {i: str(h.SOPInstanceUID) for i, h in outcome.sources.items() if str(h.SOPInstanceUID) in known}
    findings: list[Finding] = []
    for item in outcome.exam.items:
        if item.assessment is not None:
            refs = [uid_of[item.index]] if item.index in uid_of else []
            findings.append(finding(f"{item.kind} {item.index}", item.assessment, item.eye, refs))
    models = exam_models(outcome)
    for eye in outcome.exam.eyes:
        ref = eye.referral
        deciding = next((i for i in outcome.exam.items if i.index == eye.deciding), None)
        model = None
        if deciding is not None and deciding.assessment is not None:
            model = ModelId(deciding.assessment.model, deciding.assessment.model_version)
        probs = dict(eye.probabilities) if eye.probabilities is not None else None
        name = EXAM_HEADLINE[eye.eye]
        findings.append(Finding(name, model, eye.eye, eye.label, probs, str(ref["level"]), str(ref["advice"])))
    patient = outcome.exam.patient
    findings.append(Finding("patient", None, None, None, None, str(patient["level"]), str(patient["advice"])))
    sr = structured_report(
        findings, sources, models, fallback_key=outcome.sha256, summary=str(patient["advice"]), kind="exam-sr"
    )
    return to_bytes(sr)


def exam_pdf_dicom(pdf: bytes, outcome: ExamOutcome) -> bytes:
    """The exam's PDF report as Encapsulated PDF, in the inputs' study (CAM pool)."""
    ds = encapsulated_pdf(
        pdf,
        _exam_sources(outcome),
        exam_models(outcome),
        fallback_key=outcome.sha256,
        title="RetinaScope exam report (research use, not for diagnostic use)",
        kind="exam-pdf",
    )
    return to_bytes(ds)
