"""POST /report: a one-page PDF to file with the case (image, CAM, probabilities, referral, model facts)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from backend.app.api.deps import PipelineDep, require_api_key
from backend.app.api.params import (
    CAM_ERRORS,
    AlphaParam,
    FileParam,
    FrameParam,
    MethodParam,
    ModelParam,
    SiteParam,
    header_value,
)
from backend.app.services.dicom_out import DICOM_MEDIA_TYPE, report_dicom

router = APIRouter(tags=["report"], dependencies=[Depends(require_api_key)])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **CAM_ERRORS,
    200: {"description": "The PDF report.", "content": {"application/pdf": {"schema": {"type": "string"}}}},
}


@router.post("/report", summary="One-page PDF report of one image", response_class=Response, responses=_RESPONSES)
async def report(
    pipeline: PipelineDep,
    file: FileParam,
    model: ModelParam = "oct",
    method: MethodParam = "gradcam",
    alpha: AlphaParam = 0.5,
    frame: FrameParam = None,
    format: Annotated[
        Literal["pdf", "dicom"], Query(description="`dicom`: the PDF as an Encapsulated PDF DICOM instance.")
    ] = "pdf",
    site: SiteParam = None,
) -> Response:
    """The image, its class activation map, the calibrated probabilities, the referral advice, the model's
    id/version and validation metrics, a timestamp and the research-use disclaimer, as a PDF.

    An ungradable image gets a report that says so and why, with no diagnosis. Non-retinal or
    wrong-modality images are refused (422) as on /predict.

    `frame=i` of a multi-frame DICOM (OCT volume): B-scan i and its CAM, headed by the whole volume's
    referral, with the volume's answer and its deciding B-scans.

    `format=dicom`: the same PDF as Encapsulated PDF (SOP class 1.2.840.10008.5.1.4.1.1.104.1); a DICOM
    input's patient and study are kept (same StudyInstanceUID), other input opens a new study.

    Example: `curl -F file=@scan.jpeg 'localhost:8000/report?model=oct' -o report.pdf`.
    """
    if format == "dicom":
        made, answer = await report_dicom(pipeline, file, model, method, alpha, frame, site)
        return Response(
            answer.data,
            media_type=DICOM_MEDIA_TYPE,
            headers={"X-Model": header_value(made.assessment.model), "X-Referral": _level(made.assessment.referral)},
        )
    made = await pipeline.report(file, model, method, alpha, frame, site)
    return Response(
        made.pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="retinascope-report-{made.request_id}.pdf"',
            "X-Model": header_value(made.assessment.model),
            "X-Referral": str((made.assessment.referral or {}).get("level", "")),
        },
    )


def _level(referral: Any) -> str:
    return str((referral or {}).get("level", ""))
