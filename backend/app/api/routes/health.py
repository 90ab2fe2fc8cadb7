"""GET /health (liveness) and GET /ready (every configured model loaded)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backend.app.api.deps import SettingsDep, StoreDep
from backend.app.core.config import Settings
from backend.app.errors import error_body
from backend.app.schemas import HealthResponse, ModelStatus, NotReadyResponse, ReadyResponse, UploadLimits
from backend.app.services.model_store import ModelStore

router = APIRouter(tags=["ops"])


def model_statuses(store: ModelStore, detailed: bool = True) -> list[ModelStatus]:
    """Each served and each failed model with its loaded flag, version and (``detailed``) its error."""
    rows = [ModelStatus(id=m.id, task=m.task, loaded=True, version=m.meta.version) for m in store.served.values()]
    rows += [
        ModelStatus(id=f.id, task=f.task, loaded=False, error=f.error if detailed else "failed to load")
        for f in store.failed.values()
    ]
    return rows


def is_operator(request: Request) -> bool:
    """Errors name file paths and database drivers: only the operator's key (X-API-Key) sees them here."""
    principal = getattr(request.state, "principal", None)
    return principal is not None and principal.role == "operator"


def upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(max_upload_mb=settings.max_upload_mb, max_batch_files=settings.max_batch_files)


@router.get("/health", response_model=HealthResponse, summary="Liveness")
def health(store: StoreDep, settings: SettingsDep, request: Request) -> HealthResponse:
    """Always 200 while the process answers (use /ready for traffic); lists each model's state (the reason a
    model failed only for the operator key)."""
    audit = getattr(request.app.state, "audit", None)
    return HealthResponse(
        ready=store.ready and (audit is None or audit.ready),
        models=model_statuses(store, is_operator(request)),
        limits=upload_limits(settings),
    )


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness",
    responses={503: {"model": NotReadyResponse, "description": "`not_ready`: which model failed and why"}},
)
def ready(store: StoreDep, settings: SettingsDep, request: Request) -> ReadyResponse | JSONResponse:
    """200 when every configured model, the image gate and the audit log are ready; 503 `not_ready` naming
    each failure otherwise (predictions are refused while the audit log cannot be written). The reasons
    (file paths, driver errors) are shown only with the operator key."""
    detailed = is_operator(request)
    reasons = [] if store.ready else store.not_ready_reasons()
    if not detailed and reasons:
        # Model ids are public (GET /models); why they failed (paths, exceptions) is the operator's.
        failed = [f"model {f.id} failed to load" for f in store.failed.values()]
        if store.gate is None and settings.gate_enabled:
            failed.append("the image gate is not loaded")
        rest = len(reasons) - len(failed)
        reasons = [*failed, *([f"{rest} other problem(s)"] if rest > 0 else []), "details with the operator key"]
    audit = getattr(request.app.state, "audit", None)
    # check_ready reconnects a log that was unavailable: a pod whose database came up late gets ready.
    if audit is not None and not audit.check_ready():
        reasons.append(
            f"audit log {audit.safe_url} unavailable: {audit.error or 'not started'}"
            if detailed
            else "audit log unavailable"
        )
    if not reasons:
        return ReadyResponse(models=model_statuses(store, detailed), limits=upload_limits(settings))
    body = error_body(
        "not_ready",
        "; ".join(reasons),
        models=[s.model_dump() for s in model_statuses(store, detailed)],
    )
    return JSONResponse(body, status_code=503, headers={"Retry-After": "30"})
