"""The results of the Analyze page: every upload scored (cached), the batch table with its CSV, and the card
of one image (referral on top, then preview, CAM and prediction, or why the image was refused)."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from frontend import cache, catalog, tables
from frontend.answers import Prediction, VolumeResult
from frontend.components.context import AppContext
from frontend.components.gate import render_gate_error, render_ungradable
from frontend.components.heatmap import CamSize, render_cam
from frontend.components.prediction import render_prediction
from frontend.components.referral import render_referral
from frontend.components.report import render_report
from frontend.components.upload import render_preview
from frontend.components.volume import render_volume
from frontend.errors import BackendError, is_volume_refusal
from frontend.model_info import ModelInfo
from frontend.uploads import Upload

Result = Prediction | VolumeResult | BackendError


def predict_all(ctx: AppContext, model: ModelInfo, uploads: Sequence[Upload]) -> list[Result]:
    """Cached ``/predict`` of every upload, in order; a failure stays with its own image.

    A multi-frame DICOM (the backend refuses it on ``/predict``, naming ``/predict/volume``) goes to
    ``/predict/volume``: the UI does not parse DICOM itself, the backend decides what a volume is.
    """
    results: list[Result] = []
    args = (ctx.settings.backend_url,)
    for up in uploads:
        try:
            results.append(
                cache.predict(up.digest, model.id, model.version, *args, up.data, up.name, ctx.client, ctx.site)
            )
        except BackendError as e:
            if not is_volume_refusal(e):
                results.append(e)
                continue
            try:
                results.append(
                    cache.predict_volume(up.digest, model.id, model.version, *args, up.data, up.name, ctx.client)
                )
            except BackendError as e2:
                results.append(e2)
    return results


def render_results_table(model: ModelInfo, uploads: Sequence[Upload], results: Sequence[Result]) -> None:
    """The table of several uploads (one row each) and its CSV download."""
    table = tables.results_table(model, uploads, results)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_order=tables.results_display_order(table),
        # A refused or ungradable image has no label or probabilities: a dash, not "None".
        placeholder="—",
        column_config={
            "error": st.column_config.TextColumn("not scored because", width="large"),
        }
        | {
            c: st.column_config.NumberColumn(c, format="%.3f")
            for c in table.columns
            if c == "confidence" or c.startswith("p_")
        },
    )
    st.download_button(
        "Download results CSV",
        table.to_csv(index=False).encode(),
        file_name=f"retinascope_{model.id}.csv",
        mime="text/csv",
        icon=":material/download:",
        key="dl-csv",
    )


def render_result(
    ctx: AppContext, model: ModelInfo, up: Upload, result: Result, method: str, alpha: float, size: CamSize
) -> None:
    """The card of one image: referral on top, then preview, CAM overlay and prediction (or the error).
    An OCT volume gets :func:`~frontend.components.volume.render_volume` instead.

    ``model`` is the sidebar's choice (possibly ``auto``); CAM and report go to the model that
    actually answered, so they explain the very prediction shown.
    """
    if isinstance(result, VolumeResult):
        render_volume(ctx, model, up, result, method, alpha, size)
        return
    if isinstance(result, Prediction):
        # Keyed so the browser test can tell an urgent referral (st.error style) from a failure.
        with st.container(key=f"referral-{up.key}"):
            render_referral(result)
    col_img, col_cam, col_pred = st.columns([1, 1, 1.2], gap="medium")
    with col_img:
        render_preview(up)
    if isinstance(result, BackendError):
        with col_pred:
            render_gate_error(result, model)
        return
    served = catalog.served_model(ctx.models, model, result)
    with col_pred:
        if result.gradable:
            render_prediction(served, result)
        else:
            render_ungradable(result)
        render_report(ctx, served, up, method)
    with col_cam:
        if result.gradable:
            render_cam(ctx, served, up, result, method, alpha, size)
        else:
            st.caption("No CAM: there is no prediction to explain.")
