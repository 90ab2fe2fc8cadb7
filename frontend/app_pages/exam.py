"""Exam page: 2-4 photos (or OCT scans) of one patient, each assigned to an eye; the answer per eye and per
patient, every image's line, and the exam's PDF report."""

import streamlit as st

from frontend import exam_view as view
from frontend import ui
from frontend.client import AUTO_MODEL, BackendError

ctx = ui.context()
st.title("Screening exam")
st.info(ui.DISCLAIMER, icon=":material/info:")
st.caption(
    "Upload the photos of both eyes of one patient (two per eye is usual). Each eye is decided by its most "
    "urgent gradable image; an eye without a gradable image is 'retake, or refer for an in-person examination'."
)
files = st.file_uploader("Exam images", accept_multiple_files=True, key="exam_uploads")
if not files:
    st.stop()

choices = list(view.EYE_CHOICES)
laterality = []
for i, f in enumerate(files):
    picked = st.selectbox(f"Eye of image {i} ({f.name})", choices, key=f"eye_{i}")
    laterality.append(view.EYE_CHOICES[picked])
model = ctx.model.id if ctx.model is not None and ctx.model.task in ("fundus", AUTO_MODEL) else AUTO_MODEL
uploads = [(f.name, f.getvalue()) for f in files]
if not st.button("Screen the exam", type="primary"):
    st.stop()

try:
    with st.spinner(f"Screening {len(uploads)} image(s)..."):
        exam = ctx.client.predict_exam(uploads, laterality, model)
except BackendError as e:
    st.error(e.message, icon=":material/error:")
    st.stop()

patient = exam["patient"]
getattr(st, view.severity(patient["level"]))(
    f"**Patient: {view.level_title(patient['level'])}.** {patient['advice']}  \n{patient['reason']}"
)
for column, eye in zip(st.columns(len(exam["eyes"])), exam["eyes"], strict=True):
    with column:
        st.subheader(view.EYE_TITLES.get(eye["eye"], eye["eye"]))
        ref = eye["referral"]
        getattr(st, view.severity(ref["level"]))(f"**{view.level_title(ref['level'])}.** {ref['advice']}")
        st.caption(view.eye_summary(eye))
st.dataframe(view.image_rows(exam["images"]), hide_index=True)
st.caption(exam["rule_text"])
try:
    pdf = ctx.client.report_exam(uploads, laterality, model)
    st.download_button("Exam report (PDF)", pdf, file_name="retinascope-exam.pdf", mime="application/pdf")
except BackendError as e:
    st.error(f"The PDF report could not be made: {e.message}", icon=":material/error:")
