"""The prediction column of a result card: label, confidence, the probability bars and, for fundus models,
the derived DR probabilities."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from frontend import text
from frontend.answers import Prediction
from frontend.model_info import ModelInfo


def probability_chart(model: ModelInfo, pred: Prediction) -> alt.Chart:
    """Horizontal bars of every class probability in the model's class order, predicted class highlighted."""
    probs = pred.probabilities or {}
    classes = list(model.classes) or list(probs)
    frame = pd.DataFrame(
        {
            "class": classes,
            "probability": [probs.get(c, 0.0) for c in classes],
            "predicted": [c == pred.label for c in classes],
        }
    )
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title=None),
            y=alt.Y("class:N", sort=classes, title=None),
            color=alt.condition(alt.datum.predicted, alt.value("#d62728"), alt.value("#7f7f7f")),
            tooltip=["class", alt.Tooltip("probability:Q", format=".1%")],
        )
        .properties(height=28 * len(classes) + 20)
    )


def render_prediction(model: ModelInfo, pred: Prediction) -> None:
    """Label, confidence, the probability chart and, for fundus models, the derived DR probabilities."""
    left, right = st.columns(2)
    left.metric("Predicted class", pred.label)
    right.metric("Confidence", text.percent(pred.confidence))
    st.altair_chart(probability_chart(model, pred), width="stretch")
    if pred.derived:
        cols = st.columns(len(pred.derived))
        for col, (name, p) in zip(cols, pred.derived.items(), strict=True):
            col.metric(text.DERIVED_LABELS.get(name, name), text.percent(p))
    timing = f" · {pred.inference_ms:.0f} ms" if pred.inference_ms is not None else ""
    check = f" · {line}" if (line := text.gate_text(pred)) else ""
    st.caption(f"Model {pred.model} v{pred.model_version}{timing}{check}")
