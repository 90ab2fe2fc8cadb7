"""The site-profile picker of the sidebar.

The backend lists each fundus model's site profiles in ``GET /models`` (``sites``: loaded or
rejected, with the fitted temperature, points and their sensitivity / specificity on the site's
photos); a chosen profile travels as ``site=`` on /predict, /gradcam and /report, and every
referral names the profile that decided it (``referral.profile``). Profiles decide fundus answers
only: OCT answers ignore them.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from frontend import catalog, text
from frontend.model_info import ModelInfo

DEFAULT = "default"
# The picker's entry for "whatever the backend is configured with" (RETINA_DEFAULT_SITE or the model's own).
BACKEND_DEFAULT = ""


def render_site_picker(models: Sequence[ModelInfo], model: ModelInfo) -> str | None:
    """A "Site profile" select box when the fundus model has loaded profiles; returns ``site=`` (None: backend's)."""
    sites = catalog.loaded_sites(catalog.fundus_model(models, model))
    names = [str(s["name"]) for s in sites]
    if not names:
        return None
    configured = next((str(s["name"]) for s in sites if s.get("default")), None)
    options = [BACKEND_DEFAULT, DEFAULT, *names]

    def label(name: str) -> str:
        if name == BACKEND_DEFAULT:
            return f"Service default ({configured or 'model operating points'})"
        return "Model operating points" if name == DEFAULT else name

    chosen = st.selectbox(
        "Site profile",
        options,
        format_func=label,
        key="site",
        help="A clinic's own calibration and fundus referral thresholds, fitted on its graded photos "
        "(python -m training.site_profile). Fundus only: OCT answers ignore it.",
    )
    site = next((s for s in sites if s["name"] == chosen), None)
    if site is not None:
        st.caption(text.site_caption(site))
    return chosen or None
