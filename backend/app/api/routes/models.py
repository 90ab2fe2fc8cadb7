"""GET /models: what can be asked for in ``?model=``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from backend.app.api.deps import SettingsDep, StoreDep, require_api_key
from backend.app.schemas import ErrorResponse, ModelInfo
from backend.app.services.catalog import model_catalog

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get(
    "/models",
    response_model=list[ModelInfo],
    summary="Served models",
    responses={401: {"model": ErrorResponse, "description": "`unauthorized`"}},
)
def list_models(store: StoreDep, settings: SettingsDep) -> list[ModelInfo]:
    """Every loaded model (figures, metrics and card from its checkpoint; NaN shown as null), each with its
    referral thresholds in words (`operating_point_text`) and the `disclaimer`.

    A registered model that failed to load is listed too, with `loaded: false`, its
    `error`, and the registry's description of it (no version or metrics). Failed extra
    checkpoints appear only in /health and /ready, since nothing about them is known.
    """
    return model_catalog(store, settings)
