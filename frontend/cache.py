"""Per-session caches around the client: one request per image and setting, never a cached failure.

Streamlit reruns the whole script on every widget change, so without these every slider move
would re-send every upload. The key is made of the arguments without a leading underscore:
the file's SHA-256 (not its bytes), the model id and version, the CAM settings and the backend
URL. Exceptions are not cached, which is what makes the page recover by itself when the backend
comes back.

Answers are cached *per browser session* (in ``st.session_state``), never across sessions as
``st.cache_data`` would: a second user who uploads the same bytes must get their own backend call,
and with it their own audit row. Within a session a cached answer is one the user has already been
shown (and that was audited when it was made).
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any, Literal, ParamSpec, TypeVar

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from frontend.answers import CamResult, Prediction, VolumeResult
from frontend.client import BackendClient, ClientSettings
from frontend.model_info import ModelInfo

# Per session: a few dozen results cover a long session without growing unbounded.
_MAX_ENTRIES = 64
# PDF reports are a few hundred kB each and made only on request: far fewer are ever needed.
_MAX_REPORTS = 8


P = ParamSpec("P")
T = TypeVar("T")
_SESSION_KEY = "_retina_answers"
# Outside a Streamlit script run (unit tests, bare imports) there is no session: one process-local store.
_NO_SESSION: dict[str, OrderedDict[tuple[Any, ...], Any]] = {}


def _session_store() -> MutableMapping[str, OrderedDict[tuple[Any, ...], Any]]:
    """This browser session's caches (freed with the session), one ordered dict per cached function."""
    if get_script_run_ctx(suppress_warning=True) is None:
        return _NO_SESSION
    if _SESSION_KEY not in st.session_state:
        st.session_state[_SESSION_KEY] = {}
    return st.session_state[_SESSION_KEY]


def session_cache(max_entries: int) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Like ``st.cache_data`` keyed on the arguments without a leading underscore, but per session (LRU)."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        signature = inspect.signature(fn)
        keyed = [name for name in signature.parameters if not name.startswith("_")]

        @functools.wraps(fn)
        def cached(*args: P.args, **kwargs: P.kwargs) -> T:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            key = tuple(bound.arguments[name] for name in keyed)
            entries = _session_store().setdefault(fn.__qualname__, OrderedDict())
            if key in entries:
                entries.move_to_end(key)
                return entries[key]
            value = fn(*args, **kwargs)  # an exception propagates and nothing is stored
            entries[key] = value
            while len(entries) > max_entries:
                entries.popitem(last=False)
            return value

        return cached

    return wrap


def clear() -> None:
    """Forget this session's answers (and, outside a session, the process-local ones)."""
    _session_store().clear()


@st.cache_resource(show_spinner=False)
def get_client(settings: ClientSettings) -> BackendClient:
    """One client (and connection pool) per distinct setting, shared by all sessions."""
    return BackendClient(settings)


@st.cache_data(ttl=15, show_spinner=False)
def list_models(backend_url: str, _client: BackendClient) -> list[ModelInfo]:
    """``GET /models``, cached briefly: it changes only when the backend restarts."""
    return _client.models()


@session_cache(_MAX_ENTRIES)
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
    """Cached ``/predict``; ``digest`` must be ``uploads.file_digest(_data)``.

    ``model_version`` is part of the key so a backend restarted with a retrained model of the same
    id is asked again. The file name is not: the answer depends on the bytes only. ``site``: the site
    profile (part of the key: it changes the referral).
    """
    return _client.predict(_data, _filename, model, site=site)


@session_cache(_MAX_REPORTS)
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


@session_cache(_MAX_ENTRIES)
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


@session_cache(_MAX_REPORTS)
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
