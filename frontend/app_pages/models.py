"""Models page: every model the backend serves, with version, classes, calibration, referral operating points,
metrics and model card."""

import streamlit as st

from frontend.components.context import context
from frontend.components.model_card import render_model_entry
from frontend.components.referral import render_disclaimer


def main() -> None:
    ctx = context()
    st.title("Models")
    render_disclaimer(ctx.models)
    if not ctx.models:
        st.warning(ctx.models_error or "The backend lists no models (see the status in the sidebar).")
        return
    for model in ctx.models:
        with st.container(border=True):
            render_model_entry(model)


main()
