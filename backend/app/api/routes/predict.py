"""POST /predict and /predict/batch.

Handlers are ``async`` on purpose and never run torch themselves: reading the upload is
async, decoding/preprocessing goes to the bounded decode pool, and the forward pass to the
model's micro-batcher thread, so concurrent requests share one forward pass.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Query, UploadFile

from backend.app.api.deps import DecodePoolDep, MetricsDep, SettingsDep, StoreDep, require_api_key
from backend.app.core.config import Settings
from backend.app.errors import ApiError
from backend.app.schemas import BatchError, BatchItem, BatchResponse, ErrorResponse, PredictResponse
from backend.app.services.batcher import BatchResult
from backend.app.services.intake import PreparedImage, decode_and_prepare, read_upload
from backend.app.services.metrics import ServiceMetrics
from backend.app.services.model_store import ServedModel
from backend.app.services.runtime import run_in
from retina.labels import DR_GRADES, derived_dr_probabilities

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

ModelParam = Annotated[
    str,
    Query(
        description="Model id (see GET /models) or task alias `oct` / `fundus` (that task's default model).",
        examples=["oct", "fundus"],
    ),
]

IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "`unauthorized`: API key configured and missing or wrong"},
    404: {"model": ErrorResponse, "description": "`unknown_model`"},
    413: {"model": ErrorResponse, "description": "`file_too_large` (or `too_many_files` for /predict/batch)"},
    415: {"model": ErrorResponse, "description": "`unsupported_media_type`: not a JPEG/PNG/BMP/TIFF/WebP/GIF"},
    422: {
        "model": ErrorResponse,
        "description": "`empty_file`, `invalid_image` (truncated/undecodable), `image_too_large` "
        "(decompression bomb), `invalid_parameter`",
    },
    503: {"model": ErrorResponse, "description": "`not_ready`: the model failed to load (see GET /ready)"},
}


async def read_and_prepare(
    served: ServedModel,
    upload: UploadFile,
    settings: Settings,
    pool: DecodePoolDep,
    metrics: ServiceMetrics,
) -> PreparedImage:
    """Read one upload (size-limited) and decode + prepare it in the decode pool."""
    start = time.perf_counter()
    data = await read_upload(upload, settings.max_upload_bytes)
    prepared = await run_in(pool, decode_and_prepare, data, served.preprocess, settings.max_image_pixels)
    metrics.decode_seconds.labels(served.id).observe(time.perf_counter() - start)
    return prepared


async def prepare_and_score(
    served: ServedModel,
    upload: UploadFile,
    settings: Settings,
    pool: DecodePoolDep,
    metrics: ServiceMetrics,
) -> BatchResult:
    """Read, decode and prepare one upload, then score it in the model's micro-batch."""
    # expect(): the batcher may hold a batch open a few ms for this request while it decodes.
    with served.batcher.expect() as submit:
        prepared = await read_and_prepare(served, upload, settings, pool, metrics)
        future = submit(prepared.pixels)
    return await asyncio.wrap_future(future)


def prediction(served: ServedModel, probs: np.ndarray, inference_ms: float) -> dict[str, Any]:
    """The :class:`PredictResponse` fields for one image's probabilities ``(num_classes,)``."""
    names = served.class_names
    best = int(probs.argmax())
    derived = None
    if served.task == "fundus" and tuple(names) == tuple(DR_GRADES):
        derived = derived_dr_probabilities(probs)
    return {
        "model": served.id,
        "model_version": served.meta.version,
        "task": served.task,
        "label": names[best],
        "confidence": float(probs[best]),
        "probabilities": {name: float(p) for name, p in zip(names, probs, strict=True)},
        "inference_ms": round(inference_ms, 3),
        "derived": derived,
    }


def _count(metrics: ServiceMetrics, model: str, endpoint: str, outcome: str, start: float) -> None:
    metrics.model_requests.labels(model, endpoint, outcome).inc()
    metrics.model_request_seconds.labels(model, endpoint).observe(time.perf_counter() - start)


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Classify one image",
    responses=IMAGE_ERRORS,
)
async def predict(
    store: StoreDep,
    settings: SettingsDep,
    pool: DecodePoolDep,
    metrics: MetricsDep,
    file: Annotated[UploadFile, File(description="The image (JPEG, PNG, BMP, TIFF, WebP or GIF).")],
    model: ModelParam = "oct",
) -> dict[str, Any]:
    """Calibrated class probabilities for one OCT B-scan or fundus photo.

    Example: `curl -F file=@scan.jpeg 'localhost:8000/predict?model=oct'`.
    """
    served = store.resolve(model)
    start = time.perf_counter()
    try:
        result = await prepare_and_score(served, file, settings, pool, metrics)
    except ApiError as e:
        _count(metrics, served.id, "predict", e.code, start)
        raise
    body = prediction(served, result.probabilities, result.forward_ms)
    metrics.predictions.labels(served.id, body["label"]).inc()
    _count(metrics, served.id, "predict", "ok", start)
    return body


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    summary="Classify several images (one result or error entry per file, in upload order)",
    responses=IMAGE_ERRORS,
)
async def predict_batch(
    store: StoreDep,
    settings: SettingsDep,
    pool: DecodePoolDep,
    metrics: MetricsDep,
    files: Annotated[list[UploadFile], File(description="Images, repeated `files` fields (up to max_batch_files).")],
    model: ModelParam = "oct",
) -> dict[str, Any]:
    """Each file is decoded in parallel and all are scored in shared micro-batches.

    A file that is not a valid image gets `{"filename", "error", "detail"}` in its slot;
    the others are answered normally. More than `RETINA_MAX_BATCH_FILES` files is a 413
    `too_many_files` for the whole request.
    """
    served = store.resolve(model)
    if len(files) > settings.max_batch_files:
        raise ApiError(413, "too_many_files", f"{len(files)} files sent; at most {settings.max_batch_files} per batch")

    async def one(upload: UploadFile) -> BatchItem | BatchError:
        start = time.perf_counter()
        try:
            result = await prepare_and_score(served, upload, settings, pool, metrics)
        except ApiError as e:
            _count(metrics, served.id, "predict_batch", e.code, start)
            return BatchError(filename=upload.filename, error=e.code, detail=str(e.detail))
        body = prediction(served, result.probabilities, result.forward_ms)
        metrics.predictions.labels(served.id, body["label"]).inc()
        _count(metrics, served.id, "predict_batch", "ok", start)
        return BatchItem(filename=upload.filename, **body)

    results = await asyncio.gather(*(one(f) for f in files))
    return {"results": list(results)}
