"""The referral box of one answer and the page's disclaimer: the backend's words, in the level's colour."""

from __future__ import annotations

import streamlit as st

from frontend import catalog, text
from frontend.answers import Prediction
from frontend.components.alerts import alert, level_style
from frontend.model_info import ModelInfo


def render_disclaimer(models: list[ModelInfo]) -> None:
    """The backend's research-use disclaimer at the top of a page (nothing from an older backend that sends
    none: the UI has no words of its own for it)."""
    if words := catalog.disclaimer(models):
        st.info(words, icon=":material/info:")


def render_referral(pred: Prediction) -> None:
    """The referral, prominently: an alert coloured by level with the backend's headline, advice and rule,
    and the backend's note beside it.

    An ungradable image gets the backend's words and the gate's reasons, never a diagnosis. A model
    without a referral policy (``referral`` null) gets no box: the model's card says why (``advice_note``).
    """
    ref = pred.referral
    if pred.gradable and ref is None:
        return
    body = text.referral_markdown(pred)
    if not body:
        return
    level = ref.level if (ref is not None and pred.gradable) else "ungradable"
    left, right = st.columns([4, 1], vertical_alignment="center")
    with left:
        alert(level_style(level), body)
    if ref is not None and ref.note:
        right.caption(f":material/info: {ref.note}")
