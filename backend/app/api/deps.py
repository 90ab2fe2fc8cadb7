"""FastAPI dependencies: settings, the model store, thread pools, audit log, API-key check (FT's ``deps``).

All are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in
its thread pool, which for these attribute look-ups cost more than the work (measured: about
20 thread hand-offs per /predict request before this).
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from backend.app.core.config import Settings
from backend.app.errors import ApiError, not_ready
from backend.app.services.audit import AuditLog, audit_unavailable
from backend.app.services.metrics import ServiceMetrics
from backend.app.services.model_store import ModelStore

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when RETINA_API_KEY is set.")


async def app_settings(request: Request) -> Settings:
    """The settings the app was built with (``create_app(settings)``; env by default)."""
    return request.app.state.settings


async def model_store(request: Request) -> ModelStore:
    store = getattr(request.app.state, "store", None)
    if store is None:  # only before lifespan ran (app mounted without lifespan)
        raise not_ready("models are not loaded yet")
    return store


async def service_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def decode_pool(request: Request) -> ThreadPoolExecutor:
    return request.app.state.decode_pool


async def cam_pool(request: Request) -> ThreadPoolExecutor:
    return request.app.state.cam_pool


async def audit_log(request: Request) -> AuditLog:
    audit = getattr(request.app.state, "audit", None)
    if audit is None:  # only before lifespan ran: answering unaudited is not an option
        raise audit_unavailable("the audit log is not running")
    return audit


async def require_api_key(
    settings: Annotated[Settings, Depends(app_settings)],
    key: Annotated[str | None, Security(_api_key_header)] = None,
) -> None:
    """401 ``unauthorized`` unless no key is configured or ``X-API-Key`` matches (constant time)."""
    expected = settings.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "APIKey"})


SettingsDep = Annotated[Settings, Depends(app_settings)]
StoreDep = Annotated[ModelStore, Depends(model_store)]
MetricsDep = Annotated[ServiceMetrics, Depends(service_metrics)]
DecodePoolDep = Annotated[ThreadPoolExecutor, Depends(decode_pool)]
CamPoolDep = Annotated[ThreadPoolExecutor, Depends(cam_pool)]
AuditDep = Annotated[AuditLog, Depends(audit_log)]
