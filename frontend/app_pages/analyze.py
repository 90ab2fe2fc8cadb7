"""Main page: upload scans; per image the referral advice, the prediction with its class
probabilities and CAM overlay (or why the image cannot be graded), and a PDF report on request."""

import streamlit as st

from frontend import ui
from frontend.client import AUTO_MODEL, TASK_LABELS

ctx = ui.context()
st.title("RetinaScope")
st.info(ui.DISCLAIMER, icon=":material/info:")

model = ctx.model
if model is None:
    # The sidebar already says why (unreachable, not ready, no models); say what to do here.
    st.warning(
        "No model to run. Start the backend, or point RETINA_BACKEND_URL at it "
        f"(now `{ctx.settings.backend_url}`), then reload."
    )
    st.stop()
if not model.loaded:
    st.warning(f"Model `{model.id}` is not loaded by the backend ({model.error}). Pick another model in the sidebar.")
    st.stop()

kind = {"oct": "OCT B-scans", "fundus": "colour fundus photos", AUTO_MODEL: "OCT B-scans or colour fundus photos"}.get(
    model.task, "images"
)
limit_mb = ctx.status.max_upload_mb
# A fixed label keeps the widget (and the uploads) when the user switches task or model. No type
# filter and the backend's own size limit: ui.screen_uploads says on the page why a file is left out.
files = st.file_uploader(
    "Upload scans",
    help=f"One or more images: {', '.join(ui.UPLOAD_TYPES)}"
    + (f", at most {limit_mb:g} MB each (the backend's limit)." if limit_mb is not None else "."),
    accept_multiple_files=True,
    max_upload_size=ui.uploader_limit_mb(limit_mb),
    key="uploads",
)
method, alpha, size = ui.cam_controls()
if not files:
    if model.id == AUTO_MODEL:
        st.caption(f"Drop {kind} above. {model.description}")
    else:
        st.caption(
            f"Drop {kind} above. {TASK_LABELS.get(model.task, model.task)} model `{model.id}` v{model.version} "
            "is selected."
        )
    st.stop()

uploads, problems = ui.screen_uploads([ui.Upload.from_uploaded(f) for f in files], limit_mb)
for problem in problems:
    st.error(problem, icon=":material/block:")
if not uploads:
    st.stop()
with st.spinner(f"Classifying {len(uploads)} image(s) with {ui.model_label(model)}..."):
    results = ui.predict_all(ctx, model, uploads)

if len(uploads) > 1:
    st.subheader(f"Results ({len(uploads)} images, model {ui.model_label(model)})")
    table = ui.results_table(model, uploads, results)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_order=ui.results_display_order(table),
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

for i, (up, res) in enumerate(zip(uploads, results, strict=True)):
    if len(uploads) == 1:
        with st.container(border=True):
            st.subheader(up.name)
            ui.render_result(ctx, model, up, res, method, alpha, size)
        continue
    # Lazy expanders: the CAM (and the report button) of an image exist only while its card is open.
    box = st.expander(
        f"{up.name}: {ui.result_summary(res, model)}", expanded=i == 0, key=f"card-{up.key}", on_change="rerun"
    )
    if box.open:
        with box:
            ui.render_result(ctx, model, up, res, method, alpha, size)
