"""POST /gradcam: class activation map of the exact tensor /predict scores."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

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
from backend.app.schemas import GradcamResponse
from backend.app.services.pipeline import CamOptions

router = APIRouter(tags=["explain"], dependencies=[Depends(require_api_key)])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **CAM_ERRORS,
    200: {
        "description": "`format=png` (default): the overlay PNG, prediction in `X-Label`, `X-Confidence`, "
        "`X-Model`, `X-Target`, `X-Method` headers. `format=json`: the JSON below.",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "model": GradcamResponse,
    },
}


@router.post(
    "/gradcam",
    summary="Explain a prediction with a class activation map",
    response_class=Response,
    response_model=None,
    responses=_RESPONSES,
)
async def gradcam(
    pipeline: PipelineDep,
    file: FileParam,
    model: ModelParam = "oct",
    method: MethodParam = "gradcam",
    target: Annotated[
        str | None, Query(description="Class name or index to explain; default: the predicted class.")
    ] = None,
    alpha: AlphaParam = 0.5,
    size: Annotated[
        Literal["input", "original"],
        Query(description="`input`: the model's S x S view; `original`: upsampled to the upload's width x height."),
    ] = "input",
    format: Annotated[Literal["png", "json"], Query(description="PNG body or JSON with base64 PNGs.")] = "png",
    frame: FrameParam = None,
    site: SiteParam = None,
) -> Response:
    """Heatmap over the image as the model saw it (after cropping, resizing, normalising).

    The prediction and the heatmap come from the same prepared tensor. ScoreCAM runs one
    forward pass per channel of the CAM layer: expect seconds per request on a CPU.

    `frame=i` explains B-scan i of a multi-frame DICOM (only that frame is decoded).

    Example: `curl -F file=@fundus.jpeg 'localhost:8000/gradcam?model=fundus' -o cam.png`.
    """
    options = CamOptions(method, target, alpha, size, heatmap=format == "json")
    explained = await pipeline.explain(file, model, options, frame, site)
    if format == "json":
        return JSONResponse(GradcamResponse.of(explained).model_dump())
    result, drawing = explained.assessment, explained.drawing
    assert result.label is not None and result.confidence is not None
    headers = {
        "X-Model": header_value(result.model),
        "X-Model-Version": header_value(result.model_version),
        "X-Label": header_value(result.label),
        "X-Confidence": f"{result.confidence:.6f}",
        "X-Target": header_value(drawing.target),
        "X-Method": drawing.method,
        "X-Referral": str((result.referral or {}).get("level", "")),
    }
    return Response(drawing.overlay_png, media_type="image/png", headers=headers)
