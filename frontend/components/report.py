"""The PDF report button of a result card: the report is made by the backend, only when asked for."""

from __future__ import annotations

from pathlib import PurePath

import streamlit as st

from frontend import cache
from frontend.components.context import AppContext
from frontend.errors import GATE_ERRORS, BackendError
from frontend.model_info import ModelInfo
from frontend.uploads import Upload


def render_report(ctx: AppContext, model: ModelInfo, up: Upload, method: str, frame: int | None = None) -> None:
    """The "Download PDF report" button of one image; the PDF is made only when asked for.

    Why on demand: a report costs the backend a forward pass, a CAM and a page render, and a
    batch of uploads would pay that N times up front for PDFs nobody may download. A deferred
    ``st.download_button(data=callable)`` would also avoid that, but a failure inside the callable
    reaches the user only as a generic "failed to generate" message, without the backend's
    reason. So a first button asks for the PDF; it is cached (``cache.report``, keyed on image,
    model, version, CAM method and file name) and the request is remembered in the session, so
    later reruns show the download button at once and re-send nothing.
    """
    asked = f"pdf-{up.key}-{model.id}-{method}" + (f"-{frame}" if frame is not None else "")
    if not st.session_state.get(asked):
        if not st.button(
            "Create PDF report",
            key=f"make-{asked}",
            icon=":material/picture_as_pdf:",
            help="One page: image, CAM overlay, probabilities, referral, model metrics and the disclaimer.",
        ):
            return
        st.session_state[asked] = True
    try:
        with st.spinner("Creating the PDF report..."):
            pdf = cache.report(
                up.digest,
                model.id,
                model.version,
                method,
                up.name,
                ctx.settings.backend_url,
                up.data,
                ctx.client,
                frame,
                ctx.site,
            )
    except BackendError as e:
        st.session_state[asked] = False  # the "Create" button comes back, to try again
        (st.warning if e.code in GATE_ERRORS else st.error)(f"PDF report unavailable: {e.message}")
        return
    st.download_button(
        "Download PDF report",
        pdf,
        file_name=f"{PurePath(up.name).stem}{f'_bscan{frame}' if frame is not None else ''}_{model.id}_report.pdf",
        mime="application/pdf",
        key=f"dl-{asked}",
        icon=":material/picture_as_pdf:",
        on_click="ignore",
    )
