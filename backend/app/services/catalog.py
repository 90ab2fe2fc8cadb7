"""The model catalog: what ``GET /models`` says about each model, from its checkpoint, the registry, the
settings and the site profiles (the route only calls :func:`model_catalog`).

A served model's row carries its figures (the model card's, :func:`retina.figures.model_figures`),
calibration, the operating points stored in the checkpoint and the thresholds this service applies,
each with the sentence a UI prints for it (``operating_point_text``, written by ``retina.referral``),
and the disclaimer. A registered model that failed to load is listed with ``loaded: false``, its
error and the registry's description of it; nothing is known of a failed extra checkpoint, so it
appears only in /health and /ready.
"""

from __future__ import annotations

from typing import Any

from backend.app.core.config import Settings
from backend.app.schemas import ModelInfo, SiteInfo
from backend.app.services.model_store import FailedModel, ModelStore, ServedModel
from retina.checkpoint import CheckpointMeta
from retina.figures import model_figures
from retina.referral import (
    ADVICE,
    DISCLAIMER,
    NO_POLICY,
    informative,
    operating_point_text,
    operating_points,
    served_thresholds,
    site_profile_text,
)
from retina.serialize import to_plain
from retina.site_profile import SiteProfile, applies_to


def model_catalog(store: ModelStore, settings: Settings) -> list[ModelInfo]:
    """Every served model, then every registered model that failed to load (NaN figures shown as null)."""
    rows = [served_info(m, store, settings) for m in store.served.values()]
    rows += [failed_info(f, store) for f in store.failed.values() if f.spec is not None]
    return rows


def served_info(m: ServedModel, store: ModelStore, settings: Settings) -> ModelInfo:
    """The row of a loaded model."""
    meta = m.meta
    return ModelInfo(
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
        operating_point_text=point_texts(m, store, settings),
        disclaimer=DISCLAIMER,
        informative=informative(meta),
        advice_note=advice_note(m.task, m.class_names, meta, settings),
        cam_layer=m.cam_layer,
        sites=site_rows(store, m.id),
        engine=m.engine_info.to_dict(),
    )


def advice_note(task: str, class_names: list[str], meta: CheckpointMeta, settings: Settings) -> str | None:
    """Why a model's answers carry no referral advice (``retina.referral``'s words), or None when they do."""
    if task in ("oct", "fundus") and not informative(meta):
        return ADVICE["not_informative"]
    if not served_thresholds(task, class_names, settings, meta):
        return str(NO_POLICY["advice"])
    return None


def failed_info(f: FailedModel, store: ModelStore) -> ModelInfo:
    """The row of a registered model that failed to load (``f.spec`` set): what the registry says of it."""
    assert f.spec is not None
    return ModelInfo(
        id=f.id,
        task=f.spec.task,
        arch=f.spec.arch,
        classes=list(f.spec.class_names),
        input_size=f.spec.preprocess.size,
        channels=f.spec.preprocess.channels,
        version=None,
        default=store.is_default(f.id),
        description=f.spec.description,
        disclaimer=DISCLAIMER,
        cam_layer=f.spec.cam_layer,
        loaded=False,
        error=f.error,
    )


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


def default_profile(store: ModelStore, m: ServedModel) -> SiteProfile | None:
    """The loaded ``RETINA_DEFAULT_SITE`` profile when it decides this model's answers without ``site=``."""
    entry = store.sites.entries.get(store.sites.default) if store.sites.default else None
    profile = entry.profile if entry is not None else None
    if profile is None or not applies_to(m.task, m.class_names) or profile.model.model_id != m.id:
        return None
    return profile


def point_texts(m: ServedModel, store: ModelStore, settings: Settings) -> dict[str, str]:
    """``{point: sentence}`` for every threshold served or stored (``retina.referral.operating_point_text``),
    with the default site profile's point appended where that profile decides instead."""
    points = operating_points(m.meta)
    served = served_thresholds(m.task, m.class_names, settings, m.meta)
    profile = default_profile(store, m)
    site_points = profile.points() if profile is not None else {}
    texts: dict[str, str] = {}
    for name in [*served, *(p for p in points if p not in served)]:
        point = points.get(name)
        text = operating_point_text(m.task, name, point, served.get(name, (point or {}).get("threshold")))
        if not text:
            continue
        if profile is not None and name in site_points:
            site = site_points[name]
            text += " " + site_profile_text(profile.name, m.task, name, site, site["threshold"])
        texts[name] = text
    return texts
