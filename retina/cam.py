"""Class activation maps through pytorch-grad-cam, as a context manager.

``with Explainer(model, "layer4", "gradcam") as ex: heat = ex(x, target)`` registers the
hooks on entry and always removes them on exit (grad-cam's own ``__exit__``), so a failed
request never leaves hooks on a served model. The layer is resolved with
``nn.Module.get_submodule`` (never ``eval``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from retina.errors import UnknownCamMethod

METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}


class Explainer:
    """Computes CAM heatmaps for one model/layer/method.

    Call with ``x`` of shape ``(N, C, H, W)`` (the exact tensor the model scores) and a
    target class index (or ``None`` for the predicted class); returns heatmaps
    ``(N, H, W)`` float32 in ``[0, 1]`` at the input's resolution.
    Not thread-safe: hooks live on the model, so callers serialise per model.
    """

    def __init__(self, model: nn.Module, layer: str, method: str = "gradcam", batch_size: int = 32) -> None:
        if method not in METHODS:
            raise UnknownCamMethod(method)
        self.model = model
        self.layer = model.get_submodule(layer)
        self.method = method
        self._cam: Any = METHODS[method](model=model, target_layers=[self.layer])
        if hasattr(self._cam, "batch_size"):
            self._cam.batch_size = batch_size  # ScoreCAM: masked copies per forward pass

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cam.activations_and_grads.release()

    def __call__(self, x: torch.Tensor, target: int | None = None) -> np.ndarray:
        targets = None if target is None else [ClassifierOutputTarget(int(target))] * x.shape[0]
        # grad-cam needs gradients even when the caller is under inference_mode/no_grad.
        with torch.enable_grad():
            heat = self._cam(input_tensor=x, targets=targets)
        return np.nan_to_num(np.asarray(heat, dtype=np.float32)).clip(0.0, 1.0)


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap over an image.

    Args:
        rgb: ``(H, W, 3)`` float in ``[0, 1]``, the image as the model saw it.
        heat: ``(H, W)`` float in ``[0, 1]``.
        alpha: heatmap opacity in ``[0, 1]``.
    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    return show_cam_on_image(rgb.astype(np.float32), heat, use_rgb=True, image_weight=1.0 - alpha)


def heatmap_rgb(heat: np.ndarray) -> np.ndarray:
    """Colour-mapped heatmap alone: ``(H, W)`` in ``[0, 1]`` -> ``(H, W, 3)`` uint8 (JET)."""
    return show_cam_on_image(np.zeros((*heat.shape, 3), np.float32), heat, use_rgb=True, image_weight=0.0)
