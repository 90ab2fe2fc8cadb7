"""Models page: every model the backend serves, with version, classes, calibration, referral operating points,
metrics and model card."""

import streamlit as st

from frontend import ui
from frontend.client import TASK_LABELS

ctx = ui.context()
st.title("Models")
st.info(ui.DISCLAIMER, icon=":material/info:")

if not ctx.models:
    st.warning(ctx.models_error or "The backend lists no models (see the status in the sidebar).")
    st.stop()

for model in ctx.models:
    with st.container(border=True):
        badge = " · default" if model.default else ""
        version = f"v{model.version}" if model.loaded else "not loaded"
        st.subheader(f"{model.id} ({version}){badge}")
        st.caption(f"{TASK_LABELS.get(model.task, model.task)} · {ui.model_facts(model)}")
        if not model.loaded:
            st.warning(f"The backend could not load this model: {model.error or 'unknown reason'}")
        if model.description:
            st.markdown(model.description)
        st.markdown("Classes: " + ", ".join(f"`{c}`" for c in model.classes))
        if model.loaded:
            st.markdown(f"Calibration: {ui.calibration_text(model)}")
            ui.render_operating_points(model, caption=False)
        # The shipped file's figures as the model card and the PDF print them (backend `figures`). The
        # checkpoint's training-run record (`metrics`: float32 weights, pooled splits) is not shown: its
        # numbers differ from the card's, and one model should show one set of figures.
        cols = st.columns(2)
        for i, (heading, _kind, title, frame) in enumerate(ui.figure_tables(model)):
            with cols[i % 2]:
                ui.render_figure_table(heading, title, frame)
        if model.card:
            with st.expander("Model card"):
                ui.render_model_card(model.card)
