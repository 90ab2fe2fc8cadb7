"""Main page: upload scans; per image the referral advice, the prediction with its class
probabilities and CAM overlay (or why the image cannot be graded), and a PDF report on request."""

import streamlit as st

from frontend import text
from frontend.components.context import context
from frontend.components.heatmap import cam_controls
from frontend.components.referral import render_disclaimer
from frontend.components.result_card import predict_all, render_result, render_results_table
from frontend.components.upload import screen, upload_widget
from frontend.model_info import AUTO_MODEL

KINDS = {"oct": "OCT B-scans", "fundus": "colour fundus photos", AUTO_MODEL: "OCT B-scans or colour fundus photos"}


def main() -> None:
    ctx = context()
    st.title("RetinaScope")
    render_disclaimer(ctx.models)
    model = ctx.model
    if model is None:
        # The sidebar already says why (unreachable, not ready, no models); say what to do here.
        st.warning(
            "No model to run. Start the backend, or point RETINA_BACKEND_URL at it "
            f"(now `{ctx.settings.backend_url}`), then reload."
        )
        return
    if not model.loaded:
        st.warning(
            f"Model `{model.id}` is not loaded by the backend ({model.error}). Pick another model in the sidebar."
        )
        return
    files = upload_widget(ctx.status.max_upload_mb)
    method, alpha, size = cam_controls()
    if not files:
        what = (
            model.description
            if model.id == AUTO_MODEL
            else f"{text.TASK_LABELS.get(model.task, model.task)} model `{model.id}` v{model.version} is selected."
        )
        st.caption(f"Drop {KINDS.get(model.task, 'images')} above. {what}")
        return
    uploads = screen(files, ctx.status.max_upload_mb)
    if not uploads:
        return
    with st.spinner(f"Classifying {len(uploads)} image(s) with {text.model_label(model)}..."):
        results = predict_all(ctx, model, uploads)
    if len(uploads) > 1:
        st.subheader(f"Results ({len(uploads)} images, model {text.model_label(model)})")
        render_results_table(model, uploads, results)
    for i, (up, res) in enumerate(zip(uploads, results, strict=True)):
        if len(uploads) == 1:
            with st.container(border=True):
                st.subheader(up.name)
                render_result(ctx, model, up, res, method, alpha, size)
            continue
        # Lazy expanders: the CAM (and the report button) of an image exist only while its card is open.
        box = st.expander(
            f"{up.name}: {text.result_summary(res, model)}", expanded=i == 0, key=f"card-{up.key}", on_change="rerun"
        )
        if box.open:
            with box:
                render_result(ctx, model, up, res, method, alpha, size)


main()
