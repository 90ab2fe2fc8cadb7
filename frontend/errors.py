"""What can go wrong talking to the backend, as exceptions with a short message the UI shows as is.

Every transport or HTTP failure becomes a :class:`BackendError` (the backend's own ``detail`` when it
sent one), so a page shows ``st.error(err.message)`` and never a traceback. No HTTP here: ``client.py``
raises these, ``answers.py`` raises ``bad_response`` for an answer it cannot read.
"""

from __future__ import annotations

from typing import Any

# 422 codes of the backend's image gate: a problem with the picture, not with the service.
GATE_ERRORS: tuple[str, ...] = ("not_retinal_image", "wrong_modality", "ungradable_image")


class BackendError(Exception):
    """The backend refused a request or sent something unusable.

    Attributes:
        code: the backend's ``error`` code (``unknown_model``, ``invalid_image``...) or a client-side
            one (``unreachable``, ``timeout``, ``bad_response``).
        detail: plain-language reason, shown to the user as is.
        status: HTTP status, ``None`` when no HTTP answer arrived.
    """

    def __init__(self, code: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status

    @property
    def message(self) -> str:
        """What the UI shows."""
        return self.detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable (Streamlit may copy objects across threads).
        return (type(self), (self.code, self.detail, self.status))


class BackendUnreachable(BackendError):
    """No HTTP answer: connection refused, unknown host, connect timeout, dropped connection."""

    def __init__(self, code: str = "unreachable", detail: str = "cannot connect", status: int | None = None) -> None:
        super().__init__(code, detail, status)

    @property
    def message(self) -> str:
        return f"Backend unreachable: {self.detail}"


class BackendTimeout(BackendUnreachable):
    """Connected, but the answer did not come within the read timeout."""

    def __init__(self, code: str = "timeout", detail: str = "no answer in time", status: int | None = None) -> None:
        super().__init__(code, detail, status)

    @property
    def message(self) -> str:
        return f"Backend too slow: {self.detail}"


def is_volume_refusal(err: BackendError) -> bool:
    """True when a single-image endpoint refused a multi-frame file (an OCT volume): send it to /predict/volume.

    The backend's contract: 422 ``invalid_image`` whose detail names ``/predict/volume``.
    """
    return err.code == "invalid_image" and "/predict/volume" in err.detail
