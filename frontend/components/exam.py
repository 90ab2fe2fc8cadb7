"""The Screening exam page's parts: the eye picker of each upload, and the backend's answer per patient, per
eye and per image. Every word of a referral is the backend's (``headline``, ``advice``, ``reason``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from frontend import tables, text
from frontend.components.alerts import alert, level_style
from frontend.exam_answer import ExamAnswer


def pick_eyes(files: Sequence[Any]) -> list[str]:
    """One select box per upload: right, left, or ``""`` (the backend reads the DICOM header or the name)."""
    choices = list(text.EYE_CHOICES)
    return [
        text.EYE_CHOICES[st.selectbox(f"Eye of image {i} ({f.name})", choices, key=f"eye_{i}")]
        for i, f in enumerate(files)
    ]


def render_exam_answer(exam: ExamAnswer) -> None:
    """The patient's referral, one column per eye with its referral and summary, the image table and the
    rule in words."""
    alert(level_style(exam.patient.level), text.patient_markdown(exam.patient))
    for column, eye in zip(st.columns(len(exam.eyes)), exam.eyes, strict=True):
        with column:
            st.subheader(text.EYE_TITLES.get(eye.eye, eye.eye))
            alert(level_style(eye.referral.level), text.eye_markdown(eye))
            st.caption(text.eye_summary(eye))
    st.dataframe(tables.image_rows(exam.images), hide_index=True)
    st.caption(exam.rule_text)
    if exam.patient.note:
        st.caption(f":material/info: {exam.patient.note}")
