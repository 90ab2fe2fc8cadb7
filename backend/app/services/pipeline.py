"""The one prediction pipeline: upload -> gate -> model -> referral -> audit -> metrics.

:class:`Pipeline` is built once in the lifespan from the model store, the settings, the two
thread pools, the metrics and the audit log. Every image endpoint makes one call to it
(:meth:`~Pipeline.classify`, :meth:`~Pipeline.classify_batch`, :meth:`~Pipeline.explain`,
:meth:`~Pipeline.report`), and all of them go through :meth:`Pipeline._serve`, so an image is
refused, audited and counted the same way whichever endpoint it came to:

* a refusal by the gate (``not_retinal_image``, ``wrong_modality``) is audited with its code;
* every failure after the model is chosen is counted with its code in ``retina_model_requests``;
* an ungradable image is audited and counted as ``ungradable`` (``/gradcam`` then answers 422
  ``ungradable_image``: there is no heatmap of an image that gets no diagnosis);
* a graded image is audited and counted as ``ok``, its label in ``retina_predictions``.

The domain step itself (refusal, referral, label) is ``retina.assessment``; nothing here is
HTTP: failures are :class:`~backend.app.services.errors.ServiceError`.

Never runs torch on the event loop: decoding and preprocessing go to the decode pool, the
forward pass to the model's micro-batcher thread (concurrent requests share one forward
pass), CAM and PDF rendering to the CAM pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import torch

from backend.app.core.config import Settings
from backend.app.services.audit import AuditLog, audit_prediction
from backend.app.services.batcher import BatchResult
from backend.app.services.errors import ServiceError, invalid_parameter, not_ready
from backend.app.services.explain import compute_cam_for, parse_method, parse_target, png_bytes
from backend.app.services.intake import PreparedImage, Upload, decode_and_check, prepare_decoded, read_upload
from backend.app.services.metrics import ServiceMetrics
from backend.app.services.model_store import ModelStore, ServedModel
from backend.app.services.report import DISCLAIMER, ReportInput, build_report, report_metrics
from backend.app.services.runtime import request_id_var, run_in
from retina.assessment import Assessment, grade, not_retinal, refusal, ungradable
from retina.referral import label_chooser

AUTO = "auto"

Submit = Callable[[torch.Tensor], "Future[BatchResult]"]


@dataclass(frozen=True)
class Scored:
    """What a scorer made of one prepared image: probabilities ``(num_classes,)``, the forward's time, extras."""

    probabilities: np.ndarray
    ms: float
    extra: Any = None


# (served, prepared, submit) -> the pending scoring; called while the batcher expects the request.
Scorer = Callable[[ServedModel, PreparedImage, Submit], Awaitable[Scored]]


@dataclass(frozen=True)
class CamOptions:
    """What /gradcam draws: ``target`` a class name or index (None = the label), ``size`` input or original."""

    method: str = "gradcam"
    target: str | None = None
    alpha: float = 0.5
    size: Literal["input", "original"] = "input"
    heatmap: bool = False


@dataclass(frozen=True)
class Drawing:
    """A rendered CAM: the class it explains, the overlay PNG (and heatmap PNG when asked), its size."""

    target: str
    method: str
    overlay_png: bytes
    heatmap_png: bytes | None
    width: int
    height: int


@dataclass(frozen=True)
class Explanation:
    assessment: Assessment
    drawing: Drawing


@dataclass(frozen=True)
class Report:
    assessment: Assessment
    pdf: bytes
    request_id: str


@dataclass(frozen=True)
class BatchOutcome:
    filename: str | None
    result: Assessment | ServiceError


class Pipeline:
    """One image's way through the service (see the module docstring)."""

    def __init__(
        self,
        store: ModelStore,
        settings: Settings,
        metrics: ServiceMetrics,
        audit: AuditLog,
        decode_pool: Executor,
        cam_pool: Executor,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.audit = audit
        self.decode_pool = decode_pool
        self.cam_pool = cam_pool

    # ----------------------------------------------------------------- endpoints
    def check(self, model: str) -> ServedModel | None:
        """``?model=`` -> the served model (None for ``auto``); 404/503/422 before any upload is read.

        The gate must be loaded when it is enabled (never a silent pass-through), and ``auto`` needs it.
        """
        requested = None if model == AUTO else self.store.resolve(model)
        if self.store.gate is None and self.settings.gate_enabled:
            raise not_ready("the image gate is not loaded, so no image is classified; see GET /ready")
        if self.store.gate is None and model == AUTO:
            raise invalid_parameter("model=auto needs the image gate, which is disabled (RETINA_GATE_ENABLED=false)")
        return requested

    async def classify(self, upload: Upload, model: str, endpoint: str = "predict") -> Assessment:
        """One image scored in the model's shared micro-batches."""
        _, _, result, _ = await self._serve(endpoint, upload, self.check(model), _batched, hold=True)
        return result

    async def classify_batch(self, uploads: Sequence[Upload], model: str) -> list[BatchOutcome]:
        """Each upload as :meth:`classify`; an image's failure is its entry, a failed audit the whole batch's."""
        self.check(model)
        if len(uploads) > self.settings.max_batch_files:
            limit = self.settings.max_batch_files
            raise ServiceError(413, "too_many_files", f"{len(uploads)} files sent; at most {limit} per batch")

        async def one(upload: Upload) -> BatchOutcome:
            try:
                return BatchOutcome(upload.filename, await self.classify(upload, model, "predict_batch"))
            except ServiceError as e:
                if e.code == "audit_unavailable":
                    raise  # 503 for the whole batch: no item is answered unaudited
                return BatchOutcome(upload.filename, e)

        return list(await asyncio.gather(*(one(u) for u in uploads)))

    async def explain(self, upload: Upload, model: str, options: CamOptions) -> Explanation:
        """The class activation map of the exact tensor /predict scores, and its assessment."""
        requested = self.check(model)
        method = parse_method(options.method)
        if requested is not None:
            parse_target(options.target, requested.class_names)  # a bad target fails before the upload is read

        def draw(served: ServedModel, prepared: PreparedImage, _submit: Submit) -> Awaitable[Scored]:
            target = parse_target(options.target, served.class_names)
            size = prepared.original_size if options.size == "original" else None
            return run_in(self.cam_pool, self._draw, served, prepared, target, method, options.alpha, size, options)

        _, prepared, result, drawing = await self._serve("gradcam", upload, requested, draw)
        if drawing is None:
            reasons = "; ".join(prepared.gate.reasons) if prepared.gate is not None else ""
            raise ServiceError(422, "ungradable_image", f"the image is not gradable: {reasons}; retake it")
        return Explanation(result, drawing)

    async def report(self, upload: Upload, model: str, method: str = "gradcam", alpha: float = 0.5) -> Report:
        """A one-page PDF of the image, its CAM (when gradable), the assessment and the model's facts."""
        method = parse_method(method)
        requested = self.check(model)

        def draw(served: ServedModel, prepared: PreparedImage, _submit: Submit) -> Awaitable[Scored]:
            return run_in(self.cam_pool, self._draw, served, prepared, None, method, alpha, None, CamOptions())

        served, prepared, result, drawing = await self._serve("report", upload, requested, draw)
        rid = request_id_var.get()
        # PDF layout and image encoding stay off the event loop.
        pdf = await run_in(self.cam_pool, _report_pdf, served, prepared, result, drawing, rid)
        return Report(result, pdf, rid)

    # ----------------------------------------------------------------- the one path
    async def _serve(
        self, endpoint: str, upload: Upload, requested: ServedModel | None, score: Scorer, *, hold: bool = False
    ) -> tuple[ServedModel, PreparedImage, Assessment, Any]:
        """Intake, scoring (if gradable), assessment, audit and metrics of one image.

        ``hold``: tell the requested model's batcher that this request is on its way, so it may
        hold a batch open a few ms while it decodes. Returns the scorer's extra (None when ungradable).
        """
        start = time.perf_counter()
        name = requested.id if requested else AUTO
        try:
            with _expecting(requested if hold else None) as submit:
                served, prepared = await self._intake(requested, upload, endpoint)
                gradable = prepared.gate is None or prepared.gate.gradable
                pending = score(served, prepared, submit or served.batcher.submit) if gradable else None
            scored = await pending if pending is not None else None
        except ServiceError as e:
            self._count(name, endpoint, e.code, start)
            raise
        if scored is None:
            assert prepared.gate is not None
            result = ungradable(served.id, served.meta, prepared.gate)
            await self._audit(endpoint, served, result, prepared.sha256)
            self._count(served.id, endpoint, "ungradable", start)
            return served, prepared, result, None
        result = grade(served.id, served.meta, scored.probabilities, scored.ms, self.settings, prepared.gate)
        await self._audit(endpoint, served, result, prepared.sha256)
        self.metrics.predictions.labels(served.id, result.label).inc()
        self._count(served.id, endpoint, "ok", start)
        return served, prepared, result, scored.extra

    async def _intake(
        self, requested: ServedModel | None, upload: Upload, endpoint: str
    ) -> tuple[ServedModel, PreparedImage]:
        """Read, decode, gate and prepare one upload; ``requested`` None (``auto``) picks by the detected modality.

        Refusals by the gate are audited too, so the log shows every image that was turned away and
        why. An ungradable image comes back prepared, with ``prepared.gate.gradable`` False.
        """
        start = time.perf_counter()
        s = self.settings
        data = await read_upload(upload, s.max_upload_bytes)
        # Decode and gate first; the model's (costlier) preparation only for images that pass.
        decoded = await run_in(self.decode_pool, decode_and_check, data, s.max_image_pixels, self.store.gate)
        verdict = decoded.gate
        served = requested
        if served is None:
            assert verdict is not None  # check(): auto always has a gate
            served = None if verdict.modality == "other" else self.store.resolve(verdict.modality)
        if served is None:  # model=auto and not retinal: audited as model "auto"
            assert verdict is not None
            refused = not_retinal(verdict)
        else:
            right = self.store.defaults.get(verdict.modality) if verdict is not None else None
            refused = refusal(verdict, served.id, served.task, right)
        if refused is not None:
            gate_seen = {"gate": refused.gate.to_dict()}
            await audit_prediction(self.audit, endpoint, served, gate_seen, decoded.sha256, outcome=refused.code)
            raise ServiceError(422, refused.code, refused.detail)
        prepared = await run_in(self.decode_pool, prepare_decoded, decoded, served.preprocess)
        self.metrics.decode_seconds.labels(served.id).observe(time.perf_counter() - start)
        return served, prepared

    def _draw(
        self,
        served: ServedModel,
        prepared: PreparedImage,
        target: int | None,
        method: str,
        alpha: float,
        out_size: tuple[int, int] | None,
        options: CamOptions,
    ) -> Scored:
        """CAM of ``prepared`` for ``target`` (None = the label the answer shows), rendered (CAM pool)."""
        choose = label_chooser(served.task, served.class_names, self.settings, served.meta)
        batch = self.settings.scorecam_batch_size
        probs = None
        if served.engine_info.name != "torch":
            # The answer's probabilities come from the served engine, exactly as /predict's do (int8
            # can move a near-tie); torch, which CAM needs for gradients, only draws that label's map.
            probs = served.batcher.submit(prepared.pixels).result().probabilities
            target = choose(probs) if target is None else target
        cam = compute_cam_for(served, prepared.pixels, target, choose, method, alpha, out_size, batch, self.metrics)
        height, width = cam.overlay.shape[:2]
        heatmap_png = png_bytes(cam.heatmap) if options.heatmap else None
        drawing = Drawing(served.class_names[cam.target], method, png_bytes(cam.overlay), heatmap_png, width, height)
        return Scored(cam.probabilities if probs is None else probs, cam.cam_ms, drawing)

    async def _audit(self, endpoint: str, served: ServedModel, result: Assessment, sha256: str) -> None:
        outcome = "ok" if result.gradable else "ungradable"
        await audit_prediction(self.audit, endpoint, served, result.to_dict(), sha256, outcome=outcome)

    def _count(self, model: str, endpoint: str, outcome: str, start: float) -> None:
        self.metrics.model_requests.labels(model, endpoint, outcome).inc()
        self.metrics.model_request_seconds.labels(model, endpoint).observe(time.perf_counter() - start)


@contextlib.contextmanager
def _expecting(served: ServedModel | None) -> Iterator[Submit | None]:
    """``served.batcher.expect()`` when there is a model to expect, else nothing."""
    if served is None:
        yield None
        return
    with served.batcher.expect() as submit:
        yield submit


def _batched(served: ServedModel, prepared: PreparedImage, submit: Submit) -> Awaitable[Scored]:
    """Queue the image on the micro-batcher now; the awaitable resolves when its batch ran."""
    future = submit(prepared.pixels)

    async def wait() -> Scored:
        result = await asyncio.wrap_future(future)
        return Scored(result.probabilities, result.forward_ms)

    return wait()


def _report_pdf(
    served: ServedModel, prepared: PreparedImage, result: Assessment, drawing: Drawing | None, request_id: str
) -> bytes:
    """The PDF of one assessment (blocking: the CAM pool)."""
    # The image as the model saw it (cropped, resized, normalised): the overlay has the same geometry.
    view = prepared.pixels.permute(1, 2, 0).numpy()
    view = np.repeat(view, 3, axis=2) if view.shape[2] == 1 else view
    rows, heading, source = report_metrics(served.meta)
    body = result.to_dict()
    inp = ReportInput(
        image_png=png_bytes(np.ascontiguousarray(view)),
        overlay_png=drawing.overlay_png if drawing else None,
        cam_method=drawing.method if drawing else None,
        cam_target=result.label if drawing else None,
        model_id=served.id,
        model_version=served.meta.version,
        task=served.task,
        label=result.label,
        confidence=result.confidence,
        probabilities=body["probabilities"],
        derived=body["derived"],
        referral=body["referral"] or {"level": "n/a", "advice": "no referral policy for this model", "reason": ""},
        gate=body["gate"],
        metrics=rows,
        metrics_source=source,
        metrics_heading=heading,
        request_id=request_id,
        input_sha256=prepared.sha256,
        created=datetime.now(UTC),
        # Upload names often carry a patient's name; the SHA-256 identifies the image instead.
        filename=None,
        disclaimer=DISCLAIMER,
        operating_points=(served.meta.extra or {}).get("operating_points") or {},
    )
    return build_report(inp)
