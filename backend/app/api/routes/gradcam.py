"""POST /gradcam: class activation map of the exact tensor /predict scores."""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from backend.app.api.deps import (
    AuditDep,
    CamPoolDep,
    DecodePoolDep,
    MetricsDep,
    SettingsDep,
    StoreDep,
    require_api_key,
)
from backend.app.api.routes.predict import (
    AUTO,
    IMAGE_ERRORS,
    ModelParam,
    assessed,
    intake,
    resolve_param,
    ungradable_body,
)
from backend.app.errors import ApiError, invalid_parameter
from backend.app.schemas import ErrorResponse, GradcamResponse
from backend.app.services.audit import audit_prediction
from backend.app.services.explain import CamResult, compute_cam_for, png_bytes
from backend.app.services.referral import label_chooser
from backend.app.services.runtime import run_in
from retina.cam import METHODS

router = APIRouter(tags=["explain"], dependencies=[Depends(require_api_key)])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **IMAGE_ERRORS,
    200: {
        "description": "`format=png` (default): the overlay PNG, prediction in `X-Label`, `X-Confidence`, "
        "`X-Model`, `X-Target`, `X-Method` headers. `format=json`: the JSON below.",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "model": GradcamResponse,
    },
    404: {"model": ErrorResponse, "description": "`unknown_model` or `unknown_method`"},
}


def parse_target(target: str | None, class_names: list[str]) -> int | None:
    """``?target=`` as a class name (case-insensitive) or index; ``None`` = predicted class."""
    if target is None or target == "":
        return None
    if target.strip().lstrip("-").isdigit():
        idx = int(target)
        if 0 <= idx < len(class_names):
            return idx
        raise invalid_parameter(f"target index {idx} is out of range 0..{len(class_names) - 1}")
    lowered = [c.lower() for c in class_names]
    if target.lower() in lowered:
        return lowered.index(target.lower())
    raise invalid_parameter(f"unknown target {target!r}; classes: {class_names}")


def parse_method(method: str) -> str:
    """``?method=`` -> a key of ``retina.cam.METHODS``; 404 ``unknown_method`` otherwise."""
    # An unencoded `method=gradcam++` arrives as "gradcam  " ('+' means space in a query).
    plus = method.replace(" ", "+").lower()
    method = plus if plus in METHODS else method.strip().lower()
    if method not in METHODS:
        raise ApiError(404, "unknown_method", f"unknown CAM method {method!r}; available: {', '.join(METHODS)}")
    return method


def header_value(value: str) -> str:
    # Header values must be latin-1; class names of extra models might not be.
    return value if value.isascii() else quote(value)


@router.post(
    "/gradcam",
    summary="Explain a prediction with a class activation map",
    response_class=Response,
    response_model=None,
    responses=_RESPONSES,
)
async def gradcam(
    store: StoreDep,
    settings: SettingsDep,
    decode: DecodePoolDep,
    cam: CamPoolDep,
    metrics: MetricsDep,
    audit: AuditDep,
    file: Annotated[UploadFile, File(description="The image (DICOM, JPEG, PNG, BMP, TIFF, WebP or GIF).")],
    model: ModelParam = "oct",
    method: Annotated[str, Query(description=f"CAM method: {', '.join(METHODS)}.")] = "gradcam",
    target: Annotated[
        str | None, Query(description="Class name or index to explain; default: the predicted class.")
    ] = None,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="Heatmap opacity in the overlay.")] = 0.5,
    size: Annotated[
        Literal["input", "original"],
        Query(description="`input`: the model's S x S view; `original`: upsampled to the upload's width x height."),
    ] = "input",
    format: Annotated[Literal["png", "json"], Query(description="PNG body or JSON with base64 PNGs.")] = "png",
) -> Response:
    """Heatmap over the image as the model saw it (after cropping, resizing, normalising).

    The prediction and the heatmap come from the same prepared tensor. ScoreCAM runs one
    forward pass per channel of the CAM layer: expect seconds per request on a CPU.

    Example: `curl -F file=@fundus.jpeg 'localhost:8000/gradcam?model=fundus' -o cam.png`.
    """
    requested = resolve_param(store, model)
    method = parse_method(method)
    if requested is not None:
        parse_target(target, requested.class_names)  # a bad target fails before the upload is read
    start = time.perf_counter()
    try:
        served, prepared = await intake(
            store, requested or AUTO, file, settings, decode, metrics, audit, endpoint="gradcam"
        )
    except ApiError as e:
        metrics.model_requests.labels(requested.id if requested else AUTO, "gradcam", e.code).inc()
        raise
    if prepared.gate is not None and not prepared.gate.gradable:
        # No heatmap for an image that gets no diagnosis.
        await audit_prediction(
            audit, "gradcam", served, ungradable_body(served, prepared), prepared.sha256, outcome="ungradable"
        )
        metrics.model_requests.labels(served.id, "gradcam", "ungradable_image").inc()
        raise ApiError(
            422, "ungradable_image", "the image is not gradable: " + "; ".join(prepared.gate.reasons) + "; retake it"
        )
    target_idx = parse_target(target, served.class_names)
    out_size = prepared.original_size if size == "original" else None

    def render() -> tuple[CamResult, bytes, bytes | None]:
        choose = label_chooser(served.task, served.class_names, settings, served.meta)
        result = compute_cam_for(
            served, prepared.pixels, target_idx, choose, method, alpha, out_size, settings.scorecam_batch_size, metrics
        )
        heatmap_png = png_bytes(result.heatmap) if format == "json" else None
        return result, png_bytes(result.overlay), heatmap_png

    result, overlay_png, heatmap_png = await run_in(cam, render)
    body = assessed(served, prepared, result.probabilities, result.cam_ms, settings)
    await audit_prediction(audit, "gradcam", served, body, prepared.sha256)
    explained = result.target
    height, width = result.overlay.shape[:2]
    metrics.predictions.labels(served.id, body["label"]).inc()
    metrics.model_requests.labels(served.id, "gradcam", "ok").inc()
    metrics.model_request_seconds.labels(served.id, "gradcam").observe(time.perf_counter() - start)
    target_name = served.class_names[explained]
    if format == "json":
        assert heatmap_png is not None
        payload = GradcamResponse(
            model=served.id,
            model_version=served.meta.version,
            label=body["label"],
            confidence=body["confidence"],
            probabilities=body["probabilities"],
            target=target_name,
            method=method,
            width=width,
            height=height,
            overlay_png=base64.b64encode(overlay_png).decode("ascii"),
            heatmap_png=base64.b64encode(heatmap_png).decode("ascii"),
            referral=body["referral"],
            gate=body["gate"],
        )
        return JSONResponse(payload.model_dump())
    headers = {
        "X-Model": header_value(served.id),
        "X-Model-Version": header_value(served.meta.version),
        "X-Label": header_value(body["label"]),
        "X-Confidence": f"{body['confidence']:.6f}",
        "X-Target": header_value(target_name),
        "X-Method": method,
        "X-Referral": str((body["referral"] or {}).get("level", "")),
    }
    return Response(overlay_png, media_type="image/png", headers=headers)
