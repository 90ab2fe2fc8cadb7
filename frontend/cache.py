"""Streamlit caches around the client: one request per image and setting, never a cached failure.

Streamlit reruns the whole script on every widget change, so without these every slider move
would re-send every upload. ``st.cache_data`` hashes the arguments without a leading underscore:
the key is the file's SHA-256 (not its bytes), the model id and version, the CAM settings and
the backend URL. Exceptions are not cached by ``st.cache_data``, which is exactly what makes the
page recover by itself when the backend comes back.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import streamlit as st

from frontend.client import BackendClient, CamResult, ClientSettings, ModelInfo, Prediction, VolumeResult

# Uploads are a few MB at most; a few hundred results cover a long session without growing unbounded.
_MAX_ENTRIES = 512
_TTL_S = 3600
# PDF reports are a few hundred kB each and made only on request: far fewer are ever needed.
_MAX_REPORTS = 64


def file_digest(data: bytes) -> str:
    """Hex SHA-256 of an upload: the cache identity of an image."""
    return hashlib.sha256(data).hexdigest()


@st.cache_resource(show_spinner=False)
def get_client(settings: ClientSettings) -> BackendClient:
    """One client (and connection pool) per distinct setting, shared by all sessions."""
    return BackendClient(settings)


@st.cache_data(ttl=15, show_spinner=False)
def list_models(backend_url: str, _client: BackendClient) -> list[ModelInfo]:
    """``GET /models``, cached briefly: it changes only when the backend restarts."""
    return _client.models()


@st.cache_data(ttl=_TTL_S, max_entries=_MAX_ENTRIES, show_spinner=False)
def predict(
    digest: str,
    model: str,
    model_version: str,
    backend_url: str,
    _data: bytes,
    _filename: str,
    _client: BackendClient,
    site: str | None = None,
) -> Prediction:
    """Cached ``/predict``; ``digest`` must be ``file_digest(_data)``.

    ``model_version`` is part of the key so a backend restarted with a retrained model of the same
    id is asked again. The file name is not: the answer depends on the bytes only. ``site``: the site
    profile (part of the key: it changes the referral).
    """
    return _client.predict(_data, _filename, model, site=site)


@st.cache_data(ttl=_TTL_S, max_entries=_MAX_REPORTS, show_spinner=False)
def predict_volume(
    digest: str,
    model: str,
    model_version: str,
    backend_url: str,
    _data: bytes,
    _filename: str,
    _client: BackendClient,
) -> VolumeResult:
    """Cached ``/predict/volume`` (an OCT volume is scored once per model, not on every slider move)."""
    return _client.predict_volume(_data, _filename, model)


@st.cache_data(ttl=_TTL_S, max_entries=_MAX_ENTRIES, show_spinner=False)
def gradcam(
    digest: str,
    model: str,
    model_version: str,
    method: str,
    target: str | None,
    alpha: float,
    size: Literal["input", "original"],
    backend_url: str,
    _data: bytes,
    _filename: str,
    _client: BackendClient,
    frame: int | None = None,
    site: str | None = None,
) -> CamResult:
    """Cached ``/gradcam`` (JSON form); one entry per image, model, method, target, opacity, size and frame."""
    return _client.gradcam(
        _data, _filename, model, method=method, target=target, alpha=alpha, size=size, frame=frame, site=site
    )


@st.cache_data(ttl=_TTL_S, max_entries=_MAX_REPORTS, show_spinner=False)
def report(
    digest: str,
    model: str,
    model_version: str,
    method: str,
    filename: str,
    backend_url: str,
    _data: bytes,
    _client: BackendClient,
    frame: int | None = None,
    site: str | None = None,
) -> bytes:
    """Cached ``/report`` (PDF bytes); one entry per image, model, CAM method, file name and frame.

    Unlike ``predict``, the file name is part of the key: the report prints it.
    """
    return _client.report(_data, filename, model, method=method, frame=frame, site=site)
