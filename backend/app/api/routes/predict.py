"""POST /predict and /predict/batch.

Every image passes the image gate first (``retina/gate.py``): not retinal -> 422
``not_retinal_image``; the other modality than the model reads -> 422 ``wrong_modality``;
ungradable -> 200 with ``gradable: false``, the reasons and no diagnosis. ``model=auto``
routes by the detected modality. Answers carry referral advice and are audited before
they are returned (``backend/app/services/pipeline.py``).

Handlers are ``async`` on purpose and never run torch themselves: the pipeline reads the
upload on the event loop and hands decoding and the forward pass to its pools and the
model's micro-batcher, so concurrent requests share one forward pass.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from backend.app.api.deps import PipelineDep, require_api_key
from backend.app.api.params import (
    IMAGE_ERRORS,
    VOLUME_ERRORS,
    FileParam,
    FilesParam,
    ModelParam,
    ResultFormatParam,
    SiteParam,
    VolumeFileParam,
)
from backend.app.schemas import BatchResponse, PredictResponse, VolumeResponse
from backend.app.services.dicom_out import DICOM_MEDIA_TYPE, DicomAnswer, predict_sr, volume_sr

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])


@router.post("/predict", response_model=PredictResponse, summary="Classify one image", responses=IMAGE_ERRORS)
async def predict(
    pipeline: PipelineDep,
    file: FileParam,
    model: ModelParam = "oct",
    format: ResultFormatParam = "json",
    site: SiteParam = None,
) -> Any:
    """Calibrated class probabilities for one OCT B-scan or fundus photo.

    `format=dicom-sr`: the same answer as a DICOM Structured Report (TID 1500, UNVERIFIED; a DICOM
    input's patient and study, referencing it). Example: `curl -F file=@scan.jpeg 'localhost:8000/predict?model=oct'`.
    """
    if format == "dicom-sr":
        return _dicom(await predict_sr(pipeline, file, model, site=site))
    return PredictResponse.of(await pipeline.classify(file, model, site=site))


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    summary="Classify several images (one result or error entry per file, in upload order)",
    responses=IMAGE_ERRORS,
)
async def predict_batch(
    pipeline: PipelineDep, files: FilesParam, model: ModelParam = "oct", site: SiteParam = None
) -> BatchResponse:
    """Each file is decoded in parallel and all are scored in shared micro-batches.

    A file that is not a valid image gets `{"filename", "error", "detail"}` in its slot;
    the others are answered normally. More than `RETINA_MAX_BATCH_FILES` files is a 413
    `too_many_files` for the whole request.
    """
    return BatchResponse.of(await pipeline.classify_batch(files, model, site))


@router.post(
    "/predict/volume",
    response_model=VolumeResponse,
    summary="Classify an OCT volume (multi-frame DICOM): every B-scan, then one volume answer",
    responses=VOLUME_ERRORS,
)
async def predict_volume(
    pipeline: PipelineDep, file: VolumeFileParam, model: ModelParam = "oct", format: ResultFormatParam = "json"
) -> Any:
    """Every B-scan through the image gate and the OCT model (shared micro-batches), then the volume's
    probabilities by the served rule (`rule`, `rule_text`), its referral, and the B-scans that decided it
    (`deciding_frames`, 0-based). Ungradable or non-OCT B-scans are counted and skipped; too few gradable
    ones make the volume ungradable (`gradable: false`, no diagnosis). `model=auto` is the OCT default.

    Example: `curl -F file=@samples/oct/DRUSEN-1237848-volume.dcm 'localhost:8000/predict/volume?model=oct'`.
    `format=dicom-sr`: the volume's answer as a DICOM Structured Report in the volume's study.
    """
    if format == "dicom-sr":
        answer, _ = await volume_sr(pipeline, file, model)
        return _dicom(answer)
    return VolumeResponse.of(await pipeline.classify_volume(file, model))


def _dicom(answer: DicomAnswer) -> Response:
    level = (answer.assessment.referral or {}).get("level", "")
    return Response(answer.data, media_type=DICOM_MEDIA_TYPE, headers={"X-Referral": str(level)})
