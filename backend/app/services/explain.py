"""CAM for one prepared image, rendered as PNG overlay and heatmap.

The tensor explained is ``model.to_input(prepared[None])``, i.e. ``tail(spec)`` of the same
prepared ``uint8`` image that the micro-batcher scores for /predict: the heatmap explains
exactly what was classified, and the prediction returned with it comes from that same
forward pass. The overlay is drawn on ``denormalize(x, spec)``, the image
as the model saw it (cropped, resized, contrast-normalised).

Cost (2 CPU cores, per image): gradient methods need one forward and a backward from the
logits to the CAM layer only (the CAM copy has frozen weights, see ``model_store``), so
they cost about 1-2 forwards. EigenCAM needs one forward plus an SVD. ScoreCAM runs one
forward per channel of the CAM layer (960 for MobileNetV3-Large, 512 for ResNet-18) in batches of
``RETINA_SCORECAM_BATCH_SIZE``: hundreds of forwards, seconds per request.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from backend.app.services.errors import ServiceError, invalid_parameter
from backend.app.services.metrics import ServiceMetrics
from backend.app.services.model_store import ServedModel
from retina.cam import METHODS, Explainer, heatmap_rgb, overlay
from retina.preprocessing import denormalize


@dataclass(frozen=True)
class CamResult:
    """Prediction and rendered CAM of one image.

    Attributes:
        probabilities: ``(num_classes,)`` float64, softmax(logits / T) of the explained forward.
        target: class index the heatmap explains.
        overlay: ``(H, W, 3)`` uint8 RGB, heatmap blended over the model's view.
        heatmap: ``(H, W, 3)`` uint8 RGB, the JET-coloured heatmap alone.
        heat: ``(S, S)`` float32 in ``[0, 1]`` at the model's input resolution.
        cam_ms: time spent in the CAM method (forward + backward to the CAM layer).
    """

    probabilities: np.ndarray
    target: int
    overlay: np.ndarray
    heatmap: np.ndarray
    heat: np.ndarray
    cam_ms: float


def compute_cam(
    served: ServedModel,
    pixels: torch.Tensor,
    target: int | None,
    method: str,
    alpha: float,
    out_size: tuple[int, int] | None,
    scorecam_batch_size: int,
    metrics: ServiceMetrics | None = None,
) -> CamResult:
    """Predict and explain ``pixels`` (``uint8 (C, S, S)``) for class ``target`` (None = predicted).

    The probabilities come from the CAM's own forward pass of the same tensor (same weights
    as the batcher's model; equal to /predict up to float rounding), which saves a second
    forward per request. ``out_size`` ``(width, height)`` upsamples both images (bilinear)
    to the upload's size; ``None`` keeps the model's ``S x S``. Blocking and torch-heavy:
    call from a worker thread.
    """
    x = served.to_input(pixels.unsqueeze(0))  # (1, C, S, S) float, the tensor /predict scores
    captured: list[torch.Tensor] = []

    def grab_logits(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if not captured:  # the first forward is the image itself (ScoreCAM adds masked ones)
            captured.append(output.detach())

    start = time.perf_counter()
    # Hooks live on the CAM copy: serialise its users, never touch the batcher's model.
    with served.cam_lock:
        handle = served.cam_model.register_forward_hook(grab_logits)
        try:
            with Explainer(served.cam_model, served.cam_layer, method, batch_size=scorecam_batch_size) as ex:
                heat = ex(x, target)[0]
        finally:
            handle.remove()
    cam_s = time.perf_counter() - start
    if metrics is not None:
        metrics.cam_seconds.labels(served.id, method).observe(cam_s)
    logits = captured[0][0].double()
    probs = torch.softmax(logits / served.temperature, dim=0).cpu().numpy()
    # grad-cam explains argmax(logits) when target is None; argmax of softmax(logits / T) is the same.
    explained = int(logits.argmax()) if target is None else target
    rgb = denormalize(x[0], served.preprocess).numpy()  # (S, S, 3) float [0, 1]
    blended = overlay(rgb, heat, alpha)
    colour = heatmap_rgb(heat)
    if out_size is not None and out_size != blended.shape[1::-1]:
        blended = np.asarray(Image.fromarray(blended).resize(out_size, Image.Resampling.BILINEAR))
        colour = np.asarray(Image.fromarray(colour).resize(out_size, Image.Resampling.BILINEAR))
    return CamResult(probs, explained, blended, colour, heat, cam_s * 1000.0)


def compute_cam_for(
    served: ServedModel,
    pixels: torch.Tensor,
    target: int | None,
    choose: Callable[[np.ndarray], int],
    *args: Any,
    **kwargs: Any,
) -> CamResult:
    """:func:`compute_cam`, where "no target" explains ``choose(probabilities)`` (the label the answer shows).

    The answer's label is the likeliest class consistent with its referral, which is not always
    the argmax that grad-cam explains by default; then the map is made again for the label
    (a rare second pass, only for images near an operating point).
    """
    result = compute_cam(served, pixels, target, *args, **kwargs)
    if target is None:
        wanted = choose(result.probabilities)
        if wanted != result.target:
            result = compute_cam(served, pixels, wanted, *args, **kwargs)
    return result


def png_bytes(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG bytes (fast zlib level: these are transient responses)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


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
        raise ServiceError(404, "unknown_method", f"unknown CAM method {method!r}; available: {', '.join(METHODS)}")
    return method
