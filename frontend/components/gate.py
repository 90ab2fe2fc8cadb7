"""What the image gate said about an upload: a refusal (not retinal, wrong modality) or an ungradable image."""

from __future__ import annotations

import streamlit as st

from frontend import text
from frontend.answers import Prediction
from frontend.components.alerts import alert
from frontend.errors import GATE_ERRORS, BackendError
from frontend.model_info import ModelInfo


def render_gate_error(err: BackendError, model: ModelInfo | None = None) -> None:
    """A refusal of the image gate as a warning with what to do; any other failure as an error."""
    if err.code not in GATE_ERRORS:
        st.error(err.message)
        return
    title = text.GATE_TITLES[err.code][0]
    what, hint = text.refusal_text(err, model)
    alert("warning", f"**{title}**: {what}" + (f"  \n{hint}" if hint else ""))


def render_ungradable(pred: Prediction) -> None:
    """The result column of an ungradable image: what the gate saw, no probabilities."""
    st.markdown("**No diagnosis**: the image did not pass the quality check.")
    if line := text.gate_text(pred):
        st.caption(line)
    if pred.gate is not None and (pred.gate.quality or pred.gate.probabilities):
        with st.expander("Image check details"):
            st.json({"quality": pred.gate.quality, "probabilities": pred.gate.probabilities}, expanded=True)
    st.caption(f"Model {pred.model} v{pred.model_version}")
