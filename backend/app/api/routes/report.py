"""POST /report: a one-page PDF to file with the case (image, CAM, probabilities, referral, model facts)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import Response

from backend.app.api.deps import AuditDep, CamPoolDep, DecodePoolDep, MetricsDep, SettingsDep, StoreDep, require_api_key
from backend.app.api.routes.gradcam import header_value, parse_method
from backend.app.api.routes.predict import (
    AUTO,
    IMAGE_ERRORS,
    ModelParam,
    assessed,
    intake,
    resolve_param,
    ungradable_body,
)
from backend.app.schemas import ErrorResponse
from backend.app.services.audit import audit_prediction
from backend.app.services.explain import compute_cam_for, png_bytes
from backend.app.services.model_store import ServedModel
from backend.app.services.referral import RESEARCH_NOTE, label_chooser
from backend.app.services.report import ReportInput, build_report
from backend.app.services.runtime import request_id_var, run_in
from retina.cam import METHODS

router = APIRouter(tags=["report"], dependencies=[Depends(require_api_key)])

DISCLAIMER = (
    "RetinaScope is a research tool, not a medical device. This report is not a diagnosis: the model was trained "
    "on small public datasets and validated only as stated above. A qualified clinician must review the image and "
    "decide on any referral. " + RESEARCH_NOTE
)

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **IMAGE_ERRORS,
    200: {"description": "The PDF report.", "content": {"application/pdf": {"schema": {"type": "string"}}}},
    404: {"model": ErrorResponse, "description": "`unknown_model` or `unknown_method`"},
}


def _num(value: Any) -> str:
    """``0.123`` for a finite number, ``n/a`` for anything else (hand-edited or older checkpoints)."""
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _ci(ev: dict[str, Any], key: str) -> str:
    value = ev.get(key)
    if not isinstance(value, (int, float)):
        return "n/a"
    ci = ev.get(f"{key}_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.3f}"


_METRIC_NAMES = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "Macro F1"),
    ("referable_roc_auc", "Referable-DR ROC AUC"),
    ("referable_sensitivity_at_90_specificity", "Referable-DR sensitivity at 90% specificity"),
    ("ece", "Expected calibration error"),
)


def report_metrics(served: ServedModel) -> tuple[list[tuple[str, str]], str]:
    """Headline validation figures from the model card (95% bootstrap CIs) and where they come from."""
    evaluations = (served.meta.card or {}).get("evaluations") or {}
    if not isinstance(evaluations, dict) or not evaluations:
        return [], "no evaluation recorded in the checkpoint"
    rows: list[tuple[str, str]] = []
    sources = []
    for i, ev in enumerate(evaluations.values()):
        if not isinstance(ev, dict):
            continue
        tag = "" if i == 0 else f" ({ev.get('n')} raw photos)" if served.task == "fundus" else f" (set {i + 1})"
        keys = _METRIC_NAMES if i == 0 else [k for k in _METRIC_NAMES if k[0] == "referable_roc_auc"]
        for key, name in keys:
            if key in ev and ev[key] is not None:
                rows.append((name + tag, _ci(ev, key)))
        sources.append(str(ev.get("title", "")))
    cal = served.meta.calibration
    if "ece_val_before" in cal:
        after = cal.get("ece_crossfit_after", cal.get("ece_val_after"))
        rows.append(("ECE before -> after temperature scaling", f"{_num(cal['ece_val_before'])} -> {_num(after)}"))
    return rows, "; ".join(s for s in sources if s)


@router.post("/report", summary="One-page PDF report of one image", response_class=Response, responses=_RESPONSES)
async def report(
    store: StoreDep,
    settings: SettingsDep,
    decode: DecodePoolDep,
    cam: CamPoolDep,
    metrics: MetricsDep,
    audit: AuditDep,
    file: Annotated[UploadFile, File(description="The image (DICOM, JPEG, PNG, BMP, TIFF, WebP or GIF).")],
    model: ModelParam = "oct",
    method: Annotated[str, Query(description=f"CAM method: {', '.join(METHODS)}.")] = "gradcam",
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="Heatmap opacity in the overlay.")] = 0.5,
) -> Response:
    """The image, its class activation map, the calibrated probabilities, the referral advice, the model's
    id/version and validation metrics, a timestamp and the research-use disclaimer, as a PDF.

    An ungradable image gets a report that says so and why, with no diagnosis. Non-retinal or
    wrong-modality images are refused (422) as on /predict.

    Example: `curl -F file=@scan.jpeg 'localhost:8000/report?model=oct' -o report.pdf`.
    """
    method = parse_method(method)
    requested = resolve_param(store, model)
    start = time.perf_counter()
    served, prepared = await intake(store, requested or AUTO, file, settings, decode, metrics, audit, endpoint="report")
    rid = request_id_var.get()
    overlay_png: bytes | None = None
    if prepared.gate is not None and not prepared.gate.gradable:
        body = ungradable_body(served, prepared)
    else:

        def render() -> tuple[Any, bytes]:
            choose = label_chooser(served.task, served.class_names, settings, served.meta)
            result = compute_cam_for(
                served, prepared.pixels, None, choose, method, alpha, None, settings.scorecam_batch_size, metrics
            )
            return result, png_bytes(result.overlay)

        result, overlay_png = await run_in(cam, render)
        body = assessed(served, prepared, result.probabilities, result.cam_ms, settings)
    rows, source = report_metrics(served)
    # The image as the model saw it (cropped, resized, normalised): the overlay has the same geometry.
    view = prepared.pixels.permute(1, 2, 0).numpy()
    view = np.repeat(view, 3, axis=2) if view.shape[2] == 1 else view
    inp = ReportInput(
        image_png=await run_in(cam, png_bytes, np.ascontiguousarray(view)),
        overlay_png=overlay_png,
        cam_method=method if overlay_png else None,
        cam_target=body["label"] if overlay_png else None,
        model_id=served.id,
        model_version=served.meta.version,
        task=served.task,
        label=body["label"],
        confidence=body["confidence"],
        probabilities=body["probabilities"],
        derived=body.get("derived"),
        referral=body["referral"] or {"level": "n/a", "advice": "no referral policy for this model", "reason": ""},
        gate=body.get("gate"),
        metrics=rows,
        metrics_source=source,
        request_id=rid,
        input_sha256=prepared.sha256,
        created=datetime.now(UTC),
        # Upload names often carry a patient's name; the SHA-256 identifies the image instead.
        filename=None,
        disclaimer=DISCLAIMER,
        operating_points=(served.meta.extra or {}).get("operating_points") or {},
    )
    pdf = await run_in(cam, build_report, inp)  # PDF layout and image encoding stay off the event loop
    await audit_prediction(
        audit, "report", served, body, prepared.sha256, outcome="ok" if body["gradable"] else "ungradable"
    )
    metrics.model_requests.labels(served.id, "report", "ok").inc()
    metrics.model_request_seconds.labels(served.id, "report").observe(time.perf_counter() - start)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="retinascope-report-{rid}.pdf"',
            "X-Model": header_value(served.id),
            "X-Referral": str((body.get("referral") or {}).get("level", "")),
        },
    )
