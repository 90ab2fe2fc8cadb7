"""What the sidebar resolved on this rerun (settings, client, status, models, the chosen model and site),
stored in ``st.session_state`` by the entrypoint and read by the pages."""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from frontend.client import BackendClient, ClientSettings
from frontend.model_info import ModelInfo, ReadyStatus

CTX_KEY = "retina_ctx"


@dataclass
class AppContext:
    """What the sidebar resolved on this rerun; the pages read it with :func:`context`."""

    settings: ClientSettings
    client: BackendClient
    status: ReadyStatus
    models: list[ModelInfo] = field(default_factory=list)
    models_error: str | None = None
    model: ModelInfo | None = None
    site: str | None = None  # the site profile fundus answers are decided by (None: the backend's default)


def context() -> AppContext:
    """The context the entrypoint stored for this rerun."""
    return st.session_state[CTX_KEY]
