"""The card of an OCT volume: the volume's answer, the per-B-scan strip chart, and a B-scan slider with the
shown B-scan's own answer, CAM and PDF report."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd
import streamlit as st

from frontend import catalog, text
from frontend.answers import Prediction, VolumeResult
from frontend.components.context import AppContext
from frontend.components.heatmap import CamSize, render_cam
from frontend.components.prediction import probability_chart
from frontend.components.referral import render_referral
from frontend.components.report import render_report
from frontend.model_info import ModelInfo
from frontend.uploads import Upload


def volume_strip_chart(vol: VolumeResult, classes: Sequence[str], shown: int) -> alt.LayerChart:
    """Per-B-scan probability of each class along the volume (graded B-scans), the shown B-scan marked by a
    dashed rule and the deciding B-scans by grey bands."""
    rows = [
        {"B-scan": f.index, "class": c, "probability": (f.probabilities or {}).get(c, 0.0)}
        for f in vol.frames
        if f.status == "graded"
        for c in classes
    ]
    lines = (
        alt.Chart(pd.DataFrame(rows, columns=["B-scan", "class", "probability"]))
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "B-scan:Q",
                scale=alt.Scale(domain=[-0.5, vol.n_frames - 0.5]),
                # Integer ticks only; a 128-B-scan volume gets about 16 of them.
                axis=alt.Axis(values=list(range(0, vol.n_frames, max(1, vol.n_frames // 16))), format="d"),
            ),
            y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title=None),
            color=alt.Color("class:N", sort=list(classes)),
            tooltip=["B-scan", "class", alt.Tooltip("probability:Q", format=".1%")],
        )
    )
    deciding = pd.DataFrame({"B-scan": list(vol.deciding_frames)})
    bands = alt.Chart(deciding).mark_rule(color="#bbbbbb", strokeWidth=10, opacity=0.5).encode(x="B-scan:Q")
    here = alt.Chart(pd.DataFrame({"B-scan": [shown]})).mark_rule(strokeDash=[4, 3], color="black").encode(x="B-scan:Q")
    return alt.layer(bands, lines, here).properties(height=200)


def frame_options(vol: VolumeResult) -> tuple[list[int], int]:
    """The slider's B-scans (every frame) and where it starts: the first deciding B-scan (else 0)."""
    return list(range(vol.n_frames)), (vol.deciding_frames[0] if vol.deciding_frames else 0)


def render_volume_answer(served: ModelInfo, vol: VolumeResult) -> None:
    """The volume's own class and confidence with its probability bars, or why there is none."""
    pred = vol.prediction
    if pred.gradable:
        a, b = st.columns(2)
        a.metric("Volume class", pred.label)
        b.metric("Volume confidence", text.percent(pred.confidence))
        st.altair_chart(probability_chart(served, pred), width="stretch")
    else:
        st.markdown(
            f"**No diagnosis**: only {vol.n_graded} of {vol.n_frames} B-scans are gradable "
            f"({vol.needed_graded} needed)."
        )


def render_volume(
    ctx: AppContext, model: ModelInfo, up: Upload, vol: VolumeResult, method: str, alpha: float, size: CamSize
) -> None:
    """The card of an OCT volume: the volume's answer first, then the per-B-scan strip chart and a B-scan
    slider with the shown B-scan's own answer and CAM; the PDF report is of the shown B-scan."""
    pred = vol.prediction
    served = catalog.served_model(ctx.models, model, pred)
    with st.container(key=f"referral-{up.key}"):
        render_referral(pred)
    st.markdown(text.volume_summary(vol))
    st.caption(f"Volume probabilities: {vol.rule_text} (rule `{vol.rule}`).")
    classes = list(served.classes) or list(pred.probabilities or ())
    options, start = frame_options(vol)
    left, right = st.columns([1, 1.4], gap="medium")
    with left:
        render_volume_answer(served, vol)
    shown = (
        st.select_slider("B-scan", options=options, value=start, key=f"frame-{up.key}")
        if len(options) > 1
        else options[0]
    )
    with right:
        st.altair_chart(volume_strip_chart(vol, classes, int(shown)), width="stretch")
        st.caption("Per-B-scan probabilities along the volume; grey bands: deciding B-scans; dashed: shown B-scan.")
    frame = vol.frames[int(shown)]
    col_cam, col_frame = st.columns([1, 1.2], gap="medium")
    with col_frame:
        if frame.status == "graded" and frame.probabilities is not None:
            one = Prediction(pred.model, pred.model_version, pred.task, frame.label, None, frame.probabilities)
            p = frame.probabilities.get(frame.label or "", 0.0)
            st.markdown(f"**B-scan {frame.index}**: {frame.label} ({text.percent(p)})")
            st.altair_chart(probability_chart(served, one), width="stretch")
        else:
            why = "; ".join(frame.reasons) or frame.status
            st.markdown(f"**B-scan {frame.index}** was skipped ({frame.status}): {why}")
        render_report(ctx, served, up, method, frame=frame.index)
    with col_cam:
        if frame.status == "graded":
            render_cam(ctx, served, up, pred, method, alpha, size, frame=frame.index, label=frame.label)
        else:
            st.caption("No CAM: this B-scan was not graded.")
