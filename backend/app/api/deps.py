"""FastAPI dependencies: settings, the model store, the pipeline, audit log, API-key check (FT's ``deps``).

All are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in
its thread pool, which for these attribute look-ups cost more than the work (measured: about
20 thread hand-offs per /predict request before this).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from backend.app.core.config import Settings
from backend.app.errors import ApiError
from backend.app.services.audit import AuditLog
from backend.app.services.errors import audit_unavailable, not_ready
from backend.app.services.model_store import ModelStore
from backend.app.services.pipeline import Pipeline

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="A client key (RETINA_API_KEYS / RETINA_API_KEY), or the operator key.",
)


async def app_settings(request: Request) -> Settings:
    """The settings the app was built with (``create_app(settings)``; env by default)."""
    return request.app.state.settings


async def model_store(request: Request) -> ModelStore:
    store = getattr(request.app.state, "store", None)
    if store is None:  # only before lifespan ran (app mounted without lifespan)
        raise not_ready("models are not loaded yet")
    return store


async def pipeline(request: Request) -> Pipeline:
    built = getattr(request.app.state, "pipeline", None)
    if built is None:  # only before lifespan ran (app mounted without lifespan)
        raise not_ready("models are not loaded yet")
    return built


async def audit_log(request: Request) -> AuditLog:
    audit = getattr(request.app.state, "audit", None)
    if audit is None:  # only before lifespan ran: answering unaudited is not an option
        raise audit_unavailable("the audit log is not running")
    return audit


async def require_api_key(
    request: Request,
    _key: Annotated[str | None, Security(_api_key_header)] = None,
) -> None:
    """401 ``unauthorized`` unless ``core/auth.AuthMiddleware`` let the request in.

    The middleware checks the key before the body is read; this dependency only documents the
    header in OpenAPI and refuses a request that somehow bypassed the middleware.
    """
    if getattr(request.state, "principal", None) is None:
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "APIKey"})


async def require_operator(request: Request) -> None:
    """403 unless the caller holds the operator key (the middleware already refused others)."""
    principal = getattr(request.state, "principal", None)
    if principal is None or principal.role != "operator":
        raise ApiError(403, "forbidden", "this route needs the operator key")


SettingsDep = Annotated[Settings, Depends(app_settings)]
StoreDep = Annotated[ModelStore, Depends(model_store)]
PipelineDep = Annotated[Pipeline, Depends(pipeline)]
AuditDep = Annotated[AuditLog, Depends(audit_log)]
