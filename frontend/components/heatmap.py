"""The CAM part of a result card: the page-wide CAM controls, and per image the target-class picker, the
overlay from ``/gradcam`` and its PNG download."""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

import streamlit as st

from frontend import cache
from frontend.answers import CamResult, Prediction
from frontend.client import CAM_METHODS
from frontend.components.context import AppContext
from frontend.errors import GATE_ERRORS, BackendError
from frontend.model_info import ModelInfo
from frontend.uploads import Upload

CamSize = Literal["input", "original"]


def cam_controls() -> tuple[str, float, CamSize]:
    """CAM method, overlay opacity and overlay resolution, shared by all images on the page."""
    c1, c2, c3 = st.columns([2, 3, 1.2], vertical_alignment="bottom")
    method = c1.selectbox("CAM method", CAM_METHODS, key="cam-method", help="pytorch-grad-cam method")
    alpha = c2.slider("Heatmap opacity", 0.0, 1.0, 0.5, step=0.05, key="cam-alpha")
    full = c3.toggle(
        "Full resolution",
        key="cam-full",
        help="Upsample the overlay to the uploaded image's size (also for the download). "
        "Off: the image exactly as the model saw it.",
    )
    return method, float(alpha), "original" if full else "input"


def render_cam(
    ctx: AppContext,
    model: ModelInfo,
    up: Upload,
    pred: Prediction,
    method: str,
    alpha: float,
    size: CamSize,
    *,
    frame: int | None = None,
    label: str | None = None,
) -> None:
    """Target-class picker (default: the predicted class), the CAM overlay and its PNG download.

    ``frame``: a volume's B-scan, whose own ``label`` is the default target.
    """
    classes = list(model.classes) or list(pred.probabilities or ())
    shown_label = label if frame is not None else pred.label
    target = st.selectbox(
        "Explain class",
        classes,
        index=classes.index(shown_label) if shown_label in classes else 0,
        format_func=lambda c: f"{c} (predicted)" if c == shown_label else c,
        key=f"target-{up.key}-{model.id}" + (f"-{frame}" if frame is not None else ""),
    )
    try:
        with st.spinner(f"Computing {method}..."):
            cam: CamResult = cache.gradcam(
                up.digest,
                model.id,
                model.version,
                method,
                target,
                alpha,
                size,
                ctx.settings.backend_url,
                up.data,
                up.name,
                ctx.client,
                frame,
                ctx.site,
            )
    except BackendError as e:
        (st.warning if e.code in GATE_ERRORS else st.error)(f"CAM unavailable: {e.message}")
        return
    where = f"B-scan {frame}: " if frame is not None else ""
    st.image(
        cam.overlay_png,
        caption=f"{where}{method} for {cam.target} (opacity {alpha:.2f}), "
        + ("upsampled to the upload" if size == "original" else "as the model sees the image"),
        width="stretch",
        alt=f"CAM overlay ({method}, {cam.target}) for {up.name}" + (f" B-scan {frame}" if frame is not None else ""),
    )
    stem = PurePath(up.name).stem + (f"_bscan{frame}" if frame is not None else "")
    st.download_button(
        "Download overlay PNG",
        cam.overlay_png,
        file_name=f"{stem}_{model.id}_{method}_{cam.target}_{size}.png",
        mime="image/png",
        key=f"dl-{up.key}-{model.id}" + (f"-{frame}" if frame is not None else ""),
        icon=":material/download:",
    )
