"""POST /predict/exam and /report/exam: a screening exam of one patient, answered per eye and per patient.

Each file needs an eye: a repeated `laterality` form field in file order, else the DICOM header,
else the file name (422 `missing_laterality` when none). Every file goes through the same gate,
model and referral as /predict (multi-frame OCT DICOMs as /predict/volume), then `retina.exam`'s
rule decides each eye and the patient (`backend/app/services/exam.py`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Query
from fastapi.responses import Response

from backend.app.api.deps import PipelineDep, require_api_key
from backend.app.api.params import IMAGE_ERRORS, FilesParam, ModelParam
from backend.app.exam_schemas import ExamResponse
from backend.app.schemas import ErrorResponse
from backend.app.services.dicom_out import DICOM_MEDIA_TYPE, exam_pdf_dicom, exam_sr
from backend.app.services.exam import classify_exam, report_exam
from backend.app.services.runtime import run_in

router = APIRouter(tags=["exam"], dependencies=[Depends(require_api_key)])

LateralityParam = Annotated[
    list[str] | None,
    Form(description="One per file, in file order: `right`/`left`/`OD`/`OS` (a comma-separated list also works)."),
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    **IMAGE_ERRORS,
    422: {
        "model": ErrorResponse,
        "description": "`missing_laterality`: a file has no eye (form field, DICOM ImageLaterality or file name); "
        "`invalid_parameter`. A file the gate refuses does not fail the exam: its entry carries the error.",
    },
}


@router.post(
    "/predict/exam",
    response_model=ExamResponse,
    summary="Screen an exam (2-4 photos of both eyes, OCT scans or volumes): per eye and per patient",
    responses={**_ERRORS, 200: {"content": {DICOM_MEDIA_TYPE: {}}}},
)
async def predict_exam(
    pipeline: PipelineDep,
    files: FilesParam,
    laterality: LateralityParam = None,
    model: ModelParam = "auto",
    format: Annotated[Literal["json", "dicom-sr"], Query(description="`dicom-sr`: a TID 1500 SR.")] = "json",
) -> Any:
    """Each eye is decided by its most urgent gradable image; an eye without one is `ungradable`
    (retake, or refer for an in-person examination); the patient's referral is the most urgent eye's.

    Example: `curl -F files=@r.jpg -F laterality=right -F files=@l.jpg -F laterality=left
    'localhost:8000/predict/exam?model=fundus'`.
    """
    outcome = await classify_exam(pipeline, files, laterality, model)
    if format == "dicom-sr":
        data = await run_in(pipeline.cam_pool, exam_sr, outcome)
        return Response(data, media_type=DICOM_MEDIA_TYPE, headers=_headers(outcome.exam.patient["level"]))
    return ExamResponse.model_validate(outcome.exam.to_dict())


@router.post(
    "/report/exam",
    summary="PDF report of an exam (per eye and per patient)",
    response_class=Response,
    responses={**_ERRORS, 200: {"content": {"application/pdf": {}, DICOM_MEDIA_TYPE: {}}}},
)
async def report_exam_pdf(
    pipeline: PipelineDep,
    files: FilesParam,
    laterality: LateralityParam = None,
    model: ModelParam = "auto",
    format: Annotated[Literal["pdf", "dicom"], Query(description="`dicom`: as Encapsulated PDF.")] = "pdf",
) -> Response:
    """The exam's answer as one PDF page (or an Encapsulated PDF DICOM instance in the inputs' study)."""
    outcome, pdf = await report_exam(pipeline, files, laterality, model)
    headers = _headers(outcome.exam.patient["level"])
    if format == "dicom":
        data = await run_in(pipeline.cam_pool, exam_pdf_dicom, pdf, outcome)
        return Response(data, media_type=DICOM_MEDIA_TYPE, headers=headers)
    return Response(pdf, media_type="application/pdf", headers=headers)


def _headers(level: object) -> dict[str, str]:
    return {"X-Referral": str(level)}
