"""Domain errors of the services: a stable machine code, a text, and the status the API answers with.

Services raise :class:`ServiceError` and know nothing of HTTP frameworks; the one exception
handler in ``backend/app/errors.py`` turns it into ``{"error": code, "detail": text}`` with
:attr:`ServiceError.status_code` (the code table lives there, in the module docstring).
"""

from __future__ import annotations

from retina.errors import public_code
from retina.preprocessing import ImageDecodeError

# The API code of an ImageDecodeError (retina.errors.public_code) -> its status. "Not an image" is a
# media-type problem (415); an image we recognise but cannot decode, or a bomb, is an unprocessable entity (422).
_DECODE_STATUS: dict[str, int] = {
    "empty_file": 422,
    "unsupported_media_type": 415,
    "invalid_image": 422,
    "image_too_large": 422,
    "too_many_frames": 413,
    # More DICOM elements / non-pixel bytes than retina.dicom_guard lets pydicom parse.
    "dicom_header_too_large": 413,
}


class ServiceError(Exception):
    """A client-visible failure with a stable machine-readable ``code`` and the status it is answered with."""

    def __init__(self, status_code: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.headers = headers


def unknown_model(name: str, known: list[str]) -> ServiceError:
    return ServiceError(404, "unknown_model", f"unknown model {name!r}; served: {', '.join(known) or 'none'}")


def not_ready(detail: str) -> ServiceError:
    return ServiceError(503, "not_ready", detail, headers={"Retry-After": "30"})


def invalid_parameter(detail: str) -> ServiceError:
    return ServiceError(422, "invalid_parameter", detail)


def file_too_large(limit_bytes: int, what: str = "upload") -> ServiceError:
    return ServiceError(413, "file_too_large", f"{what} is over the limit of {limit_bytes / 1e6:g} MB")


def audit_unavailable(reason: str) -> ServiceError:
    return ServiceError(503, "audit_unavailable", f"the audit log cannot be written ({reason}); nothing was answered")


def from_decode_error(exc: ImageDecodeError) -> ServiceError:
    code = public_code(exc)
    return ServiceError(_DECODE_STATUS.get(code, 422), code, exc.detail)
