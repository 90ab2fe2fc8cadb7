"""A screening exam through the one pipeline: every file scored as /predict (or /predict/volume) does, then
the per-eye and per-patient rule of ``retina.exam``.

Each file is read once, given its eye (``retina.laterality``: form field, DICOM header, file
name; none -> 422 ``missing_laterality`` before anything is scored), then replayed into
:meth:`Pipeline.classify` (a photo or B-scan, audited as ``predict_exam``) or
:meth:`Pipeline.classify_volume` (a multi-frame OCT DICOM, audited as ``predict_volume``). A file
the pipeline refuses (not retinal, wrong modality, undecodable, too large) is that item's error
and counts as not gradable for its eye; a failing audit fails the whole exam (503). Then one
more audit row records the exam's answer (endpoint ``exam``, the patient's referral level,
the SHA-256 of the files' SHA-256s in upload order).

The DICOM headers of the inputs (Patient/Study identity, for the result objects only) are kept
in :class:`ExamOutcome` and never logged or audited.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from backend.app.services.audit import audit_prediction
from backend.app.services.errors import ServiceError
from backend.app.services.exam_report import build_exam_report
from backend.app.services.intake import Replay, Upload, read_upload
from backend.app.services.pipeline import AUTO, Pipeline
from backend.app.services.runtime import request_id_var, run_in
from retina.dicom import is_dicom, number_of_frames
from retina.dicom_results import source_header
from retina.exam import ExamAssessment, ExamItem, assess_exam
from retina.laterality import resolve, split_form


@dataclass(frozen=True)
class ExamOutcome:
    """The exam's answer, the DICOM inputs' headers (in upload order, DICOM files only) and the exam's key."""

    exam: ExamAssessment
    sources: dict[int, Dataset]
    sha256: str


@dataclass(frozen=True)
class _File:
    index: int
    filename: str | None
    data: bytes
    eye: str
    source: str
    frames: int


async def _read(pipeline: Pipeline, uploads: Sequence[Upload], forms: list[str | None]) -> list[_File]:
    """Every upload read (each up to the volume limit) and given its eye; 422 ``missing_laterality`` else."""
    files: list[_File] = []
    missing: list[str] = []
    for i, (upload, form) in enumerate(zip(uploads, forms, strict=True)):
        data = await read_upload(upload, pipeline.settings.max_volume_upload_bytes)
        dicom = is_dicom(data)
        eye, source = resolve(form, data, upload.filename, dicom)
        if eye is None:
            said = f" (laterality {form!r} is not left/right/OD/OS)" if form else ""
            missing.append(f"file {i}{said}")
            continue
        frames = number_of_frames(data) if dicom else 1
        files.append(_File(i, upload.filename, data, eye, source or "", frames))
    if missing:
        raise ServiceError(
            422,
            "missing_laterality",
            "no eye for " + ", ".join(missing) + ": send a `laterality` form field per file, in file order "
            "(left/right/OD/OS), or DICOM files with ImageLaterality, or names with _left/_right/OD/OS",
        )
    return files


async def _score(pipeline: Pipeline, f: _File, model: str) -> ExamItem:
    """One file through the pipeline; a refusal is the item's error (an audit failure is everyone's)."""
    try:
        if f.frames > 1:
            # A volume is OCT: an OCT model id stays, anything else (auto, a fundus model) is the OCT default.
            requested = pipeline.check(model)
            volume_model = model if requested is not None and requested.task == "oct" else AUTO
            scored = await pipeline.classify_volume(Replay(f.filename, f.data), volume_model)
            return ExamItem(f.index, f.filename, f.eye, f.source, "volume", scored.volume, None, scored.to_dict())  # type: ignore[arg-type]
        result = await pipeline.classify(Replay(f.filename, f.data), model, "predict_exam")
        return ExamItem(f.index, f.filename, f.eye, f.source, "image", result)  # type: ignore[arg-type]
    except ServiceError as e:
        if e.code == "audit_unavailable":
            raise
        kind = "volume" if f.frames > 1 else "image"
        return ExamItem(f.index, f.filename, f.eye, f.source, kind, None, (e.code, e.detail))  # type: ignore[arg-type]


async def classify_exam(
    pipeline: Pipeline, uploads: Sequence[Upload], laterality: Sequence[str] | None, model: str
) -> ExamOutcome:
    """Several images (and OCT volumes) of one patient -> per-eye and per-patient answers (``retina.exam``)."""
    pipeline.check(model)
    if not uploads:
        raise ServiceError(422, "invalid_parameter", "an exam needs at least one file")
    if len(uploads) > pipeline.settings.max_batch_files:
        limit = pipeline.settings.max_batch_files
        raise ServiceError(413, "too_many_files", f"{len(uploads)} files sent; at most {limit} per exam")
    files = await _read(pipeline, uploads, split_form(laterality, len(uploads)))
    items = await asyncio.gather(*(_score(pipeline, f, model) for f in files))
    exam = assess_exam(items)
    digests = [hashlib.sha256(f.data).hexdigest() for f in files]
    key = hashlib.sha256("".join(digests).encode()).hexdigest()
    patient = exam.patient
    outcome = "ungradable" if patient["level"] == "ungradable" else "ok"
    await audit_prediction(pipeline.audit, "exam", None, {"referral": dict(patient)}, key, outcome=outcome)
    sources = {f.index: h for f in files if is_dicom(f.data) and (h := source_header(f.data)) is not None}
    return ExamOutcome(exam, sources, key)


async def report_exam(
    pipeline: Pipeline, uploads: Sequence[Upload], laterality: Sequence[str] | None, model: str
) -> tuple[ExamOutcome, bytes]:
    """The exam (as :func:`classify_exam`) and its PDF report (rendered on the CAM pool)."""
    outcome = await classify_exam(pipeline, uploads, laterality, model)
    pdf = await run_in(pipeline.cam_pool, build_exam_report, outcome.exam, request_id_var.get())
    return outcome, pdf
