"""POST /predict and /predict/batch.

Every image passes the image gate first (``retina/gate.py``): not retinal -> 422
``not_retinal_image``; the other modality than the model reads -> 422 ``wrong_modality``;
ungradable -> 200 with ``gradable: false``, the reasons and no diagnosis. ``model=auto``
routes by the detected modality. Answers carry referral advice and are audited before
they are returned.

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

from backend.app.api.deps import AuditDep, DecodePoolDep, MetricsDep, SettingsDep, StoreDep, require_api_key
from backend.app.core.config import Settings
from backend.app.errors import ApiError, invalid_parameter, not_ready
from backend.app.schemas import BatchError, BatchItem, BatchResponse, ErrorResponse, PredictResponse
from backend.app.services.audit import AuditLog, audit_prediction
from backend.app.services.batcher import BatchResult
from backend.app.services.intake import (
    PreparedImage,
    decode_and_check,
    prepare_decoded,
    read_upload,
)
from backend.app.services.metrics import ServiceMetrics
from backend.app.services.model_store import ModelStore, ServedModel
from backend.app.services.referral import consistent_label, referral_for, ungradable_referral
from backend.app.services.runtime import run_in
from retina.gate import GateResult, ImageGate
from retina.labels import DR_GRADES, derived_dr_probabilities

router = APIRouter(tags=["predict"], dependencies=[Depends(require_api_key)])

ModelParam = Annotated[
    str,
    Query(
        description="Model id (see GET /models), task alias `oct` / `fundus` (that task's default model), or "
        "`auto` (the image gate detects OCT vs fundus and picks that task's default model).",
        examples=["oct", "fundus", "auto"],
    ),
]

IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "`unauthorized`: API key configured and missing or wrong"},
    404: {"model": ErrorResponse, "description": "`unknown_model`"},
    413: {"model": ErrorResponse, "description": "`file_too_large` (or `too_many_files` for /predict/batch)"},
    415: {
        "model": ErrorResponse,
        "description": "`unsupported_media_type`: not a DICOM/JPEG/PNG/BMP/TIFF/WebP/GIF (or a DICOM codec other "
        "than uncompressed, JPEG baseline, RLE)",
    },
    422: {
        "model": ErrorResponse,
        "description": "`not_retinal_image` (the image gate saw neither an OCT B-scan nor a fundus photo), "
        "`wrong_modality` (e.g. a fundus photo sent to an OCT model; the detail names the right model), "
        "`ungradable_image` (/gradcam only), `empty_file`, `invalid_image` (truncated/undecodable, multi-frame "
        "DICOM), `image_too_large` (decompression bomb), `invalid_parameter`",
    },
    503: {
        "model": ErrorResponse,
        "description": "`not_ready`: the model failed to load (see GET /ready); "
        "`audit_unavailable`: the answer could not be written to the audit log",
    },
}


AUTO = "auto"
_KIND = {"oct": "an OCT B-scan", "fundus": "a colour fundus photo"}
_READS = {"oct": "OCT B-scans", "fundus": "colour fundus photos"}


def require_gate(store: ModelStore, settings: Settings, model: str | ServedModel) -> ImageGate | None:
    """The loaded gate; 503 when it is enabled but failed to load (never a silent pass-through)."""
    if store.gate is None and settings.gate_enabled:
        raise not_ready("the image gate is not loaded, so no image is classified; see GET /ready")
    if store.gate is None and model == AUTO:
        raise invalid_parameter("model=auto needs the image gate, which is disabled (RETINA_GATE_ENABLED=false)")
    return store.gate


def not_retinal(verdict: GateResult) -> ApiError:
    """422 ``not_retinal_image`` with the gate probabilities that decided it."""
    near = ", ".join(
        f"{m} {p:.3f}" + (f" (accepted from {verdict.thresholds[m]:.3f})" if m in verdict.thresholds else "")
        for m, p in verdict.probabilities.items()
    )
    extra = [r for r in verdict.reasons if not r.startswith("it does not look like")]
    return ApiError(
        422,
        "not_retinal_image",
        "this does not look like an OCT B-scan or a colour fundus photo"
        + (f" ({'; '.join(extra)})" if extra else "")
        + (f"; the image gate's probabilities: {near}" if near else "")
        + ". Nothing was predicted.",
    )


def gate_refusal(verdict: GateResult | None, served: ServedModel, store: ModelStore) -> ApiError | None:
    """422 ``not_retinal_image`` / ``wrong_modality`` for what the gate saw, or None to go on."""
    if verdict is None:
        return None
    if verdict.modality == "other":
        return not_retinal(verdict)
    if verdict.modality != served.task:
        right = store.defaults.get(verdict.modality)
        return ApiError(
            422,
            "wrong_modality",
            f"this looks like {_KIND[verdict.modality]}, but model {served.id!r} reads {_READS[served.task]}: "
            f"send it with model={verdict.modality}" + (f" (model {right})" if right else "") + " or model=auto",
        )
    return None


async def intake(
    store: ModelStore,
    model: str | ServedModel,
    upload: UploadFile,
    settings: Settings,
    pool: DecodePoolDep,
    metrics: ServiceMetrics,
    audit: AuditLog,
    *,
    endpoint: str,
) -> tuple[ServedModel, PreparedImage]:
    """Read, decode, gate and prepare one upload; resolve ``model=auto`` by the detected modality.

    Refusals by the gate (422 ``not_retinal_image`` / ``wrong_modality``) are audited too, so
    the log shows every image that was turned away and why. An ungradable image comes back
    prepared, with ``prepared.gate.gradable`` False: the caller answers without a diagnosis.
    """
    start = time.perf_counter()
    gate = require_gate(store, settings, model)
    data = await read_upload(upload, settings.max_upload_bytes)
    # Decode and gate first; the model's (costlier) preparation only for images that pass.
    decoded = await run_in(pool, decode_and_check, data, settings.max_image_pixels, gate)
    verdict = decoded.gate
    served: ServedModel | None
    if isinstance(model, ServedModel):
        served = model
    elif model == AUTO:
        assert verdict is not None  # require_gate: auto always has a gate
        served = None if verdict.modality == "other" else store.resolve(verdict.modality)
    else:
        raise AssertionError("intake needs a served model or 'auto'")
    if served is None:  # model=auto and not retinal: audited as model "auto"
        assert verdict is not None
        refusal: ApiError | None = not_retinal(verdict)
    else:
        refusal = gate_refusal(verdict, served, store)
    if refusal is not None:
        gate_seen = {"gate": verdict.to_dict()} if verdict is not None else None
        await audit_prediction(audit, endpoint, served, gate_seen, decoded.sha256, outcome=refusal.code)
        raise refusal
    assert served is not None
    prepared = await run_in(pool, prepare_decoded, decoded, served.preprocess)
    metrics.decode_seconds.labels(served.id).observe(time.perf_counter() - start)
    return served, prepared


def resolve_param(store: ModelStore, model: str) -> ServedModel | None:
    """``?model=`` -> served model, or None for ``auto`` (decided after decoding)."""
    return None if model == AUTO else store.resolve(model)


def assessed(
    served: ServedModel, prepared: PreparedImage, probs: np.ndarray, inference_ms: float, settings: Settings
) -> dict[str, Any]:
    """The :class:`PredictResponse` body of one graded image: probabilities ``(num_classes,)``, the
    referral at the model's operating points, a label consistent with it, and the gate's verdict."""
    names = served.class_names
    referral = referral_for(served.task, names, probs, settings, served.meta)
    best = consistent_label(served.task, names, probs, referral)
    derived = None
    if served.task == "fundus" and tuple(names) == tuple(DR_GRADES):
        derived = derived_dr_probabilities(probs)
    return {
        "model": served.id,
        "model_version": served.meta.version,
        "task": served.task,
        "gradable": True,
        "label": names[best],
        "confidence": float(probs[best]),
        "probabilities": {name: float(p) for name, p in zip(names, probs, strict=True)},
        "inference_ms": round(inference_ms, 3),
        "derived": derived,
        "referral": referral,
        "gate": prepared.gate.to_dict() if prepared.gate is not None else None,
    }


def ungradable_body(served: ServedModel, prepared: PreparedImage) -> dict[str, Any]:
    """The answer for an image the gate found ungradable: the reasons, no diagnosis."""
    assert prepared.gate is not None
    return {
        "model": served.id,
        "model_version": served.meta.version,
        "task": served.task,
        "gradable": False,
        "label": None,
        "confidence": None,
        "probabilities": None,
        "inference_ms": 0.0,
        "derived": None,
        "referral": ungradable_referral(prepared.gate.reasons),
        "gate": prepared.gate.to_dict(),
    }


async def answer(
    store: ModelStore,
    model: str,
    upload: UploadFile,
    settings: Settings,
    pool: DecodePoolDep,
    metrics: ServiceMetrics,
    audit: AuditLog,
    endpoint: str,
) -> dict[str, Any]:
    """One image end to end: intake, micro-batched forward pass (if gradable), referral, audit."""
    start = time.perf_counter()
    requested = resolve_param(store, model)
    label = requested.id if requested else AUTO
    try:
        if requested is None:
            served, prepared = await intake(store, AUTO, upload, settings, pool, metrics, audit, endpoint=endpoint)
            future = served.batcher.submit(prepared.pixels) if _gradable(prepared) else None
        else:
            # expect(): the batcher may hold a batch open a few ms for this request while it decodes.
            with requested.batcher.expect() as submit:
                served, prepared = await intake(
                    store, requested, upload, settings, pool, metrics, audit, endpoint=endpoint
                )
                future = submit(prepared.pixels) if _gradable(prepared) else None
    except ApiError as e:
        _count(metrics, label, endpoint, e.code, start)
        raise
    if future is None:
        body = ungradable_body(served, prepared)
        await audit_prediction(audit, endpoint, served, body, prepared.sha256, outcome="ungradable")
        _count(metrics, served.id, endpoint, "ungradable", start)
        return body
    result: BatchResult = await asyncio.wrap_future(future)
    body = assessed(served, prepared, result.probabilities, result.forward_ms, settings)
    await audit_prediction(audit, endpoint, served, body, prepared.sha256)
    metrics.predictions.labels(served.id, body["label"]).inc()
    _count(metrics, served.id, endpoint, "ok", start)
    return body


def _gradable(prepared: PreparedImage) -> bool:
    return prepared.gate is None or prepared.gate.gradable


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
    audit: AuditDep,
    file: Annotated[UploadFile, File(description="The image (DICOM, JPEG, PNG, BMP, TIFF, WebP or GIF).")],
    model: ModelParam = "oct",
) -> dict[str, Any]:
    """Calibrated class probabilities for one OCT B-scan or fundus photo.

    Example: `curl -F file=@scan.jpeg 'localhost:8000/predict?model=oct'`.
    """
    return await answer(store, model, file, settings, pool, metrics, audit, "predict")


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
    audit: AuditDep,
    files: Annotated[list[UploadFile], File(description="Images, repeated `files` fields (up to max_batch_files).")],
    model: ModelParam = "oct",
) -> dict[str, Any]:
    """Each file is decoded in parallel and all are scored in shared micro-batches.

    A file that is not a valid image gets `{"filename", "error", "detail"}` in its slot;
    the others are answered normally. More than `RETINA_MAX_BATCH_FILES` files is a 413
    `too_many_files` for the whole request.
    """
    resolve_param(store, model)  # 404 / 503 for the whole request before reading any file
    require_gate(store, settings, model)
    if len(files) > settings.max_batch_files:
        raise ApiError(413, "too_many_files", f"{len(files)} files sent; at most {settings.max_batch_files} per batch")

    async def one(upload: UploadFile) -> BatchItem | BatchError:
        try:
            body = await answer(store, model, upload, settings, pool, metrics, audit, "predict_batch")
        except ApiError as e:
            if e.code == "audit_unavailable":
                raise  # 503 for the whole batch: no item is answered unaudited
            return BatchError(filename=upload.filename, error=e.code, detail=str(e.detail))
        return BatchItem(filename=upload.filename, **body)

    results = await asyncio.gather(*(one(f) for f in files))
    return {"results": list(results)}
