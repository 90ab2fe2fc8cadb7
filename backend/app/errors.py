"""One error body for every failure: ``{"error": CODE, "detail": TEXT}`` (FT's ``errors`` module).

The services raise :class:`~backend.app.services.errors.ServiceError` (a machine code, a
text and a status, no HTTP framework); the API layer's own failures (API key, the upload-size
middleware) are :class:`ApiError`, a FastAPI ``HTTPException`` with a code. FastAPI's own
404/405/422 and Starlette's HTTP errors are rewritten into the same shape.
Unexpected exceptions never reach the client as a traceback: the request-id middleware in
``main.py`` logs them and answers 500 ``internal_error`` with the request id.

Codes (HTTP status):

=========================  ======  ==============================================
unknown_model              404     ``?model=`` names no served model or task
unknown_method             404     ``?method=`` is not a CAM method
not_found                  404     no such route
method_not_allowed         405     wrong HTTP verb
unauthorized               401     API key missing or wrong (checked before the body is read)
forbidden                  403     a client key on an operator route (GET /audit)
audit_requires_api_key     403     GET /audit while no operator key is configured
file_too_large             413     an upload (or the body) is over the limit
too_many_files             413     /predict/batch got more than ``max_batch_files``
too_many_frames            413     a volume with more than ``max_volume_frames`` B-scans
dicom_header_too_large     413     a DICOM with more non-pixel data than ``retina.dicom_guard`` lets pydicom parse
unsupported_media_type     415     the bytes are not an image we decode
empty_file                 422     zero-byte upload
invalid_image              422     truncated or undecodable image; a multi-frame DICOM without ``frame=``
image_too_large            422     over ``max_image_pixels`` / ``max_volume_pixels`` or the decode memory budget
invalid_parameter          422     missing field, bad query value, unknown target
unknown_site               422     ``?site=`` names no loaded site profile
not_retinal_image          422     the image gate saw neither an OCT B-scan nor a fundus photo
wrong_modality             422     the other kind of image than the model reads (names the right one)
ungradable_image           422     /gradcam of an image the gate found ungradable
not_ready                  503     a model, the image gate or the audit log is not ready
overloaded                 503     the worker's in-flight memory budget is full (Retry-After)
audit_unavailable          503     the answer could not be committed to the audit log
internal_error             500     a bug; logged with the request id
=========================  ======  ==============================================
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.app.services.errors import ServiceError

logger = logging.getLogger(__name__)

_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "file_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    429: "too_many_requests",
    500: "internal_error",
    503: "not_ready",
}


class ApiError(HTTPException):
    """A client-visible failure with a stable machine-readable ``code``.

    Subclassing FastAPI's ``HTTPException`` matters: FastAPI re-raises those untouched
    while it parses a multipart body, so a size limit hit mid-stream stays a 413.
    """

    def __init__(self, status_code: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.code = code


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def _format_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


async def http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """ApiError, FastAPI/Starlette HTTPException (404 route, 405, ...) -> the one error body."""
    code = getattr(exc, "code", None) or _STATUS_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and code == "not_found" and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}"
    return JSONResponse(error_body(code, detail), status_code=exc.status_code, headers=exc.headers)


async def service_error_handler(request: Request, exc: ServiceError) -> JSONResponse:
    """A domain error raised below the routes -> the one error body, with its status."""
    return JSONResponse(error_body(exc.code, exc.detail), status_code=exc.status_code, headers=exc.headers)


async def validation_exception_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's request validation (query, form fields) -> 422 ``invalid_parameter``."""
    return JSONResponse(error_body("invalid_parameter", _format_validation(exc)), status_code=422)


def install(app: Any) -> None:
    """Register the handlers on a FastAPI app."""
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_exception_handler)
