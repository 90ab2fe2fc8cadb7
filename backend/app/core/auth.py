"""API keys and roles, checked in an ASGI middleware before any byte of a request body is read.

Keys (``core/config.py``):

* client keys: ``RETINA_API_KEYS="clinic-a:KEY1,ui:KEY2"`` (named), and ``RETINA_API_KEY`` (named
  ``default``, the single-key setup of earlier versions). A client key may call every prediction
  route and ``/models``.
* the operator key ``RETINA_OPERATOR_KEY`` (named ``operator``): everything a client may do, plus
  ``GET /audit``. A client key there is a 403 ``forbidden``; with no operator key configured the
  audit log is closed to everyone (403 ``audit_requires_api_key``).

Without any client key the service refuses to start, unless ``RETINA_INSECURE_NO_AUTH=true`` opts
out for a loopback-only run (``scripts/run.sh`` does, the image and compose do not); requests then
carry the name ``anonymous``. The key's *name*, never the key, goes to the audit row of every answer
(``runtime.client_var``).

Why a middleware: a FastAPI dependency runs after the multipart body was parsed, so a caller
without a key could make the server read and spool up to the upload limit (100 MB for a volume)
before hearing 401. Here the 401 is sent without calling ``receive`` at all.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.app.core.config import Settings
from backend.app.errors import error_body
from backend.app.services.runtime import client_var

logger = logging.getLogger(__name__)

Role = Literal["client", "operator"]

# Open to everyone: liveness/readiness probes (which carry no paths or driver text), Prometheus
# scraping, and the docs with their static assets and schema.
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
PUBLIC_PREFIXES = ("/docs-static/",)
OPERATOR_PATHS = frozenset({"/audit"})
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name (as the audit log records it) and its role."""

    name: str
    role: Role


class KeyRing:
    """Keys -> principals; :meth:`lookup` compares against every key in constant time per key."""

    def __init__(self, entries: Iterable[tuple[str, str, Role]]) -> None:
        self._entries = [(name, key.encode(), role) for name, key, role in entries]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries: list[tuple[str, str, Role]] = [(n, k, "client") for n, k in settings.client_keys().items()]
        if settings.operator_key is not None:
            entries.append(("operator", settings.operator_key.get_secret_value(), "operator"))
        return cls(entries)

    @property
    def has_client_keys(self) -> bool:
        return any(role == "client" for _, _, role in self._entries)

    @property
    def has_operator_key(self) -> bool:
        return any(role == "operator" for _, _, role in self._entries)

    def lookup(self, key: str | None) -> Principal | None:
        if not key:
            return None
        given = key.encode()
        found = None
        for name, expected, role in self._entries:  # no early exit: the time does not say which key matched
            if hmac.compare_digest(given, expected) and found is None:
                found = Principal(name, role)
        return found


def check_configured(settings: Settings) -> None:
    """Refuse to start an open API: no client key and no explicit loopback opt-out is a ``RuntimeError``."""
    if settings.client_keys() or settings.insecure_no_auth:
        return
    raise RuntimeError(
        "no API key configured: set RETINA_API_KEYS=name:key[,name:key] (or RETINA_API_KEY), e.g. "
        'python3 -c "import secrets; print(secrets.token_urlsafe(32))"; for a loopback-only run without keys '
        "set RETINA_INSECURE_NO_AUTH=true (scripts/run.sh does)"
    )


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class AuthMiddleware:
    """401 ``unauthorized`` / 403 ``forbidden`` before the body; the caller's principal on ``scope['state']``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.keys = KeyRing.from_settings(settings)
        self.open = settings.insecure_no_auth and not self.keys.has_client_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = get_route_path(scope).rstrip("/") or "/"
        given = Headers(scope=scope).get("x-api-key")
        principal = self.keys.lookup(given)
        if _is_public(path) or scope.get("method") == "OPTIONS":  # CORS preflights carry no key
            if principal is not None:  # an operator's key shows /health's and /ready's details
                scope.setdefault("state", {})["principal"] = principal
            await self.app(scope, receive, send)
            return
        if principal is None and self.open and not given:
            principal = Principal(ANONYMOUS, "client")
        if principal is None:
            await _refuse(scope, receive, send, 401, "unauthorized", "missing or wrong X-API-Key header")
            return
        if path in OPERATOR_PATHS and principal.role != "operator":
            if not self.keys.has_operator_key:
                await _refuse(
                    scope,
                    receive,
                    send,
                    403,
                    "audit_requires_api_key",
                    "the audit log is served only when RETINA_OPERATOR_KEY is set (send it as X-API-Key)",
                )
            else:
                await _refuse(scope, receive, send, 403, "forbidden", "this route needs the operator key")
            return
        scope.setdefault("state", {})["principal"] = principal
        token = client_var.set(principal.name)
        try:
            await self.app(scope, receive, send)
        finally:
            client_var.reset(token)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, code: str, detail: str) -> None:
    """Answer without reading the body; ``Connection: close`` so an unread body is not parsed as the next request."""
    headers = {"Connection": "close"}
    if status == 401:
        headers["WWW-Authenticate"] = "APIKey"
    logger.info("%s %s refused: %s", scope.get("method"), scope.get("path"), code)
    await JSONResponse(error_body(code, detail), status_code=status, headers=headers)(scope, receive, send)
