"""GET /models: what can be asked for in ``?model=``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from backend.app.api.deps import SettingsDep, StoreDep, require_api_key
from backend.app.schemas import ErrorResponse, ModelInfo, SiteInfo
from backend.app.services.model_store import ModelStore
from retina.checkpoint import CheckpointMeta
from retina.figures import model_figures
from retina.referral import informative, operating_points, served_thresholds
from retina.serialize import to_plain


def calibration_summary(meta: CheckpointMeta) -> dict[str, Any]:
    """The checkpoint's calibration block with uniform ``ece_before`` / ``ece_after`` keys
    (``ece_after``: see :attr:`CheckpointMeta.ece_after`)."""
    cal = meta.calibration
    out = to_plain(dict(cal), default=str) or {}
    if "ece_val_before" in cal:
        out["ece_before"] = to_plain(cal["ece_val_before"], default=str)
        out["ece_after"] = to_plain(meta.ece_after, default=str)
    return out


def site_rows(store: ModelStore, model_id: str) -> list[SiteInfo]:
    """The site profiles fitted for ``model_id``; the default fundus model also lists profiles of no served model."""
    fallback = store.defaults.get("fundus") == model_id
    return [
        SiteInfo(
            name=e.name,
            loaded=e.loaded,
            default=store.sites.default == e.name,
            error=e.error,
            profile=e.profile.model_dump(mode="json") if e.profile is not None else None,
        )
        for e in store.sites.for_model(model_id, fallback=fallback)
    ]


router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get(
    "/models",
    response_model=list[ModelInfo],
    summary="Served models",
    responses={401: {"model": ErrorResponse, "description": "`unauthorized`"}},
)
def list_models(store: StoreDep, settings: SettingsDep) -> list[ModelInfo]:
    """Every loaded model (figures, metrics and card from its checkpoint; NaN shown as null).

    A registered model that failed to load is listed too, with `loaded: false`, its
    `error`, and the registry's description of it (no version or metrics). Failed extra
    checkpoints appear only in /health and /ready, since nothing about them is known.
    """
    rows = []
    for m in store.served.values():
        meta = m.meta
        rows.append(
            ModelInfo(
                id=m.id,
                task=m.task,
                arch=meta.arch,
                classes=m.class_names,
                input_size=meta.preprocess.size,
                channels=meta.preprocess.channels,
                version=meta.version,
                metrics=to_plain(meta.metrics, default=str) or {},
                figures=[ev.to_dict() for ev in model_figures(meta.card, meta.metrics, meta.calibration)],
                default=store.is_default(m.id),
                description=m.description,
                card=to_plain(meta.card, default=str) or {},
                temperature=meta.temperature,
                calibration=calibration_summary(meta),
                operating_points=to_plain(operating_points(meta), default=str) or {},
                served_thresholds=served_thresholds(m.task, m.class_names, settings, meta),
                informative=informative(meta),
                cam_layer=m.cam_layer,
                sites=site_rows(store, m.id),
                engine=m.engine_info.to_dict(),
            )
        )
    for f in store.failed.values():
        if f.spec is None:
            continue
        rows.append(
            ModelInfo(
                id=f.id,
                task=f.spec.task,
                arch=f.spec.arch,
                classes=list(f.spec.class_names),
                input_size=f.spec.preprocess.size,
                channels=f.spec.preprocess.channels,
                version=None,
                default=store.is_default(f.id),
                description=f.spec.description,
                cam_layer=f.spec.cam_layer,
                loaded=False,
                error=f.error,
            )
        )
    return rows
