"""The site-profile picker of the sidebar, and the words the UI prints about a profile.

The backend lists each fundus model's site profiles in ``GET /models`` (``sites``: loaded or
rejected, with the fitted temperature, points and their sensitivity / specificity on the site's
photos); a chosen profile travels as ``site=`` on /predict, /gradcam and /report, and every
referral names the profile that decided it (``referral.profile``). Profiles decide fundus answers
only: OCT answers ignore them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

from frontend.client import ModelInfo

DEFAULT = "default"
# The picker's entry for "whatever the backend is configured with" (RETINA_DEFAULT_SITE or the model's own).
BACKEND_DEFAULT = ""


def fundus_model(models: Sequence[ModelInfo], model: ModelInfo) -> ModelInfo | None:
    """The fundus model whose profiles apply: the chosen one, or with auto-detect the fundus default."""
    if model.task == "fundus":
        return model
    if model.task == "auto":
        return next((m for m in models if m.task == "fundus" and m.default), None)
    return None


def loaded_sites(model: ModelInfo | None) -> list[dict[str, Any]]:
    return [s for s in (model.sites if model else ()) if s.get("loaded")]


def _rates(fit: Any) -> str:
    if not isinstance(fit, Mapping) or fit.get("sensitivity") is None:
        return ""
    s_lo, s_hi = fit.get("sensitivity_ci95") or (None, None)
    c_lo, c_hi = fit.get("specificity_ci95") or (None, None)
    text = f"sensitivity {fit['sensitivity']:.2f}"
    text += f" [{s_lo:.2f}, {s_hi:.2f}]" if s_lo is not None and s_hi is not None else ""
    text += f", specificity {fit['specificity']:.2f}"
    text += f" [{c_lo:.2f}, {c_hi:.2f}]" if c_lo is not None and c_hi is not None else ""
    return text


def site_caption(site: Mapping[str, Any]) -> str:
    """One line on a profile: where it was fitted and how its refer point did there."""
    p = site.get("profile") or {}
    refer = p.get("refer") or {}
    parts = [f"Fitted on {p.get('n_images', '?')} photos ({p.get('n_referable', '?')} referable)"]
    if refer.get("threshold") is not None:
        parts.append(f"refer at P(grade >= 2) >= {refer['threshold']:.3f}")
    if rates := _rates(refer.get("fit")):
        parts.append(rates + " on the site's photos")
    if p.get("temperature") is not None:
        parts.append(f"temperature {p['temperature']:.2f}")
    return "; ".join(parts) + "."


def profile_text(profile: str) -> str | None:
    """What the referral box says about who decided it (nothing for the model's own points)."""
    if not profile or profile == DEFAULT:
        return None
    return f"Decided by the site profile **{profile}** (this clinic's own operating points)."


def render_site_picker(models: Sequence[ModelInfo], model: ModelInfo) -> str | None:
    """A "Site profile" select box when the fundus model has loaded profiles; returns ``site=`` (None: backend's)."""
    target = fundus_model(models, model)
    names = [str(s["name"]) for s in loaded_sites(target)]
    if not names:
        return None
    configured = next((str(s["name"]) for s in loaded_sites(target) if s.get("default")), None)
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
    site = next((s for s in loaded_sites(target) if s["name"] == chosen), None)
    if site is not None:
        st.caption(site_caption(site))
    return chosen or None
