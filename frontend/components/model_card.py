"""A model's facts as the sidebar and the Models page show them: figures per evaluation set, referral
operating points (the backend's sentences), the "not informative" flag and the model card."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import streamlit as st

from frontend import tables, text
from frontend.components.alerts import ALERT_ICONS
from frontend.model_info import ModelInfo


def render_figure_table(heading: str, title: str, frame: pd.DataFrame) -> None:
    st.markdown(f"**{heading}**")
    if title:
        st.caption(title)
    # st.table, not st.dataframe: a narrow sidebar wraps a long value instead of cutting it
    # ("0.326 (0.17-0.5").
    st.table(frame, hide_index=True)


def render_metrics(model: ModelInfo, every_set: bool = False) -> None:
    """The model's headline figures, one table per evaluation set.

    The sidebar (``every_set=False``) shows the lead set (the card's first that is not a validation split,
    as the PDF does) and the others in an expander; the Models page shows every set.
    """
    found = tables.figure_tables(model)
    if not found:
        st.caption("No evaluation figures recorded.")
        return
    if every_set:
        for heading, _kind, title, frame in found:
            render_figure_table(heading, title, frame)
        return
    lead = next((t for t in found if t[1] != "validation"), found[0])
    render_figure_table(lead[0], lead[2], lead[3])
    others = [t for t in found if t is not lead]
    if others:
        with st.expander(f"Other evaluation sets ({len(others)})"):
            for heading, _kind, title, frame in others:
                render_figure_table(heading, title, frame)


def render_model_card(card: Any) -> None:
    """A model card is markdown text or a dict of fields (data, split, metrics, limits...)."""
    if isinstance(card, str):
        st.markdown(card)
    elif isinstance(card, Mapping):
        for key, value in card.items():
            if isinstance(value, Mapping | list):
                st.markdown(f"**{key}**")
                st.json(value, expanded=False)
            else:
                st.markdown(f"**{key}**: {value}")
    else:
        st.caption("No model card.")


def render_not_informative(model: ModelInfo) -> None:
    """The backend's note on a model whose answers carry no referral advice (not informative, or no policy)."""
    if model.loaded and model.advice_note:
        st.warning(model.advice_note, icon=ALERT_ICONS["warning"])


def render_operating_points(model: ModelInfo, caption: bool = True) -> None:
    """The model's referral operating points, as the backend words them, each with its checks on other sets;
    and the "not informative" warning when its validated accuracy is indistinguishable from chance."""
    render_not_informative(model)
    points = text.operating_point_lines(model)
    if not points:
        return
    show = st.caption if caption else st.markdown
    st.markdown("**Referral thresholds**")
    for lines in points:
        show("  \n".join([lines[0], *(f"· {line}" for line in lines[1:])]))


def render_model_entry(model: ModelInfo) -> None:
    """One model on the Models page: name, version, facts, description, classes, calibration, operating
    points, every evaluation set's figures and the card."""
    badge = " · default" if model.default else ""
    version = f"v{model.version}" if model.loaded else "not loaded"
    st.subheader(f"{model.id} ({version}){badge}")
    st.caption(f"{text.TASK_LABELS.get(model.task, model.task)} · {text.model_facts(model)}")
    if not model.loaded:
        st.warning(f"The backend could not load this model: {model.error or 'unknown reason'}")
    if model.description:
        st.markdown(model.description)
    st.markdown("Classes: " + ", ".join(f"`{c}`" for c in model.classes))
    if model.loaded:
        st.markdown(f"Calibration: {text.calibration_text(model)}")
        render_operating_points(model, caption=False)
    # The shipped file's figures as the model card and the PDF print them (backend `figures`). The
    # checkpoint's training-run record (`metrics`: float32 weights, pooled splits) is not shown: its
    # numbers differ from the card's, and one model should show one set of figures.
    cols = st.columns(2)
    for i, (heading, _kind, title, frame) in enumerate(tables.figure_tables(model)):
        with cols[i % 2]:
            render_figure_table(heading, title, frame)
    if model.card:
        with st.expander("Model card"):
            render_model_card(model.card)
