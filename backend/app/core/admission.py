"""ASGI middleware: 503 ``overloaded`` past ``RETINA_MAX_IN_FLIGHT`` uploads, before their bodies are read."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.app.errors import error_body
from backend.app.services.admission import RETRY_AFTER_S, Admission


class AdmissionMiddleware:
    """Counts POST requests (the routes that take uploads) in flight; refuses past the limit without reading."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if not self.admission.try_enter():
            response = JSONResponse(
                error_body(
                    "overloaded",
                    f"the server is busy ({self.admission.max_in_flight} uploads in flight, RETINA_MAX_IN_FLIGHT); "
                    f"retry in {RETRY_AFTER_S} s",
                ),
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.leave()
