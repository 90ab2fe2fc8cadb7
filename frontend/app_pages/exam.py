"""Exam page: 2-4 photos (or OCT scans) of one patient, each assigned to an eye; the backend's answer per eye
and per patient, every image's line, and the exam's PDF report."""

import streamlit as st

from frontend.components.context import context
from frontend.components.exam import pick_eyes, render_exam_answer
from frontend.components.referral import render_disclaimer
from frontend.errors import BackendError
from frontend.model_info import AUTO_MODEL


def main() -> None:
    ctx = context()
    st.title("Screening exam")
    render_disclaimer(ctx.models)
    st.caption(
        "Upload the photos of both eyes of one patient (two per eye is usual). Each eye is decided by its most "
        "urgent gradable image."
    )
    files = st.file_uploader("Exam images", accept_multiple_files=True, key="exam_uploads")
    if not files:
        return
    laterality = pick_eyes(files)
    model = ctx.model.id if ctx.model is not None and ctx.model.task in ("fundus", AUTO_MODEL) else AUTO_MODEL
    uploads = [(f.name, f.getvalue()) for f in files]
    if not st.button("Screen the exam", type="primary"):
        return
    try:
        with st.spinner(f"Screening {len(uploads)} image(s)..."):
            exam = ctx.client.predict_exam(uploads, laterality, model)
    except BackendError as e:
        st.error(e.message, icon=":material/error:")
        return
    render_exam_answer(exam)
    try:
        pdf = ctx.client.report_exam(uploads, laterality, model)
        st.download_button("Exam report (PDF)", pdf, file_name="retinascope-exam.pdf", mime="application/pdf")
    except BackendError as e:
        st.error(f"The PDF report could not be made: {e.message}", icon=":material/error:")


main()
