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

The domain step itself is ``retina.assessment``, run here in its parts: ``route`` (which model
answers, ``auto`` by the gate's modality, and the gate's refusals) in the decode thread,
``forward_probabilities`` in the micro-batcher, ``grade`` / ``ungradable`` after; the batch
scorer runs the same step in one call (``assess_image``). Nothing here is HTTP: failures are
:class:`~backend.app.services.errors.ServiceError`.

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
from backend.app.services.admission import Admission
from backend.app.services.audit import AuditLog, audit_prediction
from backend.app.services.batcher import BatchResult, wait_forward
from backend.app.services.errors import ServiceError, from_decode_error, invalid_parameter, not_ready
from backend.app.services.explain import compute_cam_for, parse_method, parse_target, png_bytes
from backend.app.services.intake import (
    DecodedVolume,
    Limits,
    PreparedImage,
    Replay,
    Upload,
    decode_gate_prepare,
    decode_volume,
    read_upload,
)
from backend.app.services.metrics import ServiceMetrics
from backend.app.services.model_store import ModelStore, ServedModel
from backend.app.services.report import DISCLAIMER, ReportInput, VolumeSummary, build_report, report_metrics
from backend.app.services.runtime import request_id_var, run_in
from backend.app.services.sites import Decision, decision_for
from retina.assessment import Assessment, Route, grade, route, ungradable
from retina.dicom import is_dicom
from retina.errors import ImageDecodeError
from retina.gate import GateResult
from retina.memory import estimate
from retina.preprocessing import PreprocessSpec
from retina.referral import NO_POLICY, label_chooser
from retina.site_profile import SiteProfile
from retina.volume import RULE_TEXT, VolumeAssessment, assess_volume

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
class ScoredVolume:
    """A volume's assessment and the prepared ``uint8 (C, S, S)`` inputs of its graded frames (for the report)."""

    assessment: VolumeAssessment
    prepared: dict[int, torch.Tensor]
    sha256: str


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
        admission: Admission | None = None,
        header_pool: Executor | None = None,
    ) -> None:
        self.store = store
        # Without one given (tests, scripts): a budget from the settings, as the app's lifespan builds it.
        self.admission = admission or Admission(int(settings.memory_budget_mb * 1e6), settings.max_in_flight)
        # Header reads (estimate) are quick but not free (a DICOM walk): off the event loop, not behind decodes.
        self.header_pool = header_pool or cam_pool
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

    def site(self, site: str | None) -> SiteProfile | None:
        """``?site=`` -> the site profile to apply (None: the model's own points); 422 ``unknown_site``."""
        return self.store.sites.resolve(site)

    async def classify(
        self, upload: Upload, model: str, endpoint: str = "predict", site: str | None = None
    ) -> Assessment:
        """One image scored in the model's shared micro-batches; ``site`` decides a fundus answer (see sites.py)."""
        requested, profile = self.check(model), self.site(site)
        _, _, result, _ = await self._serve(endpoint, upload, requested, self._batched, hold=True, profile=profile)
        return result

    async def classify_batch(
        self, uploads: Sequence[Upload], model: str, site: str | None = None
    ) -> list[BatchOutcome]:
        """Each upload as :meth:`classify`; an image's failure is its entry, a failed audit the whole batch's."""
        self.check(model)
        self.site(site)  # an unknown site fails the whole request before any upload is read
        if len(uploads) > self.settings.max_batch_files:
            limit = self.settings.max_batch_files
            raise ServiceError(413, "too_many_files", f"{len(uploads)} files sent; at most {limit} per batch")

        async def one(upload: Upload) -> BatchOutcome:
            try:
                return BatchOutcome(upload.filename, await self.classify(upload, model, "predict_batch", site))
            except ServiceError as e:
                if e.code == "audit_unavailable":
                    raise  # 503 for the whole batch: no item is answered unaudited
                return BatchOutcome(upload.filename, e)

        return list(await asyncio.gather(*(one(u) for u in uploads)))

    async def explain(
        self, upload: Upload, model: str, options: CamOptions, frame: int | None = None, site: str | None = None
    ) -> Explanation:
        """The class activation map of the exact tensor /predict scores, and its assessment.

        ``frame``: which B-scan of a multi-frame DICOM (only that frame is decoded).
        """
        requested, profile = self.check(model), self.site(site)
        method = parse_method(options.method)
        if requested is not None:
            parse_target(options.target, requested.class_names)  # a bad target fails before the upload is read

        def draw(served: ServedModel, prepared: PreparedImage, _submit: Submit) -> Awaitable[Scored]:
            target = parse_target(options.target, served.class_names)
            size = prepared.original_size if options.size == "original" else None
            decision = self._decision(served, profile)
            return run_in(
                self.cam_pool, self._draw, served, prepared, target, method, options.alpha, size, options, decision
            )

        _, prepared, result, drawing = await self._serve(
            "gradcam", upload, requested, draw, frame=frame, profile=profile
        )
        if drawing is None:
            reasons = "; ".join(prepared.gate.reasons) if prepared.gate is not None else ""
            raise ServiceError(422, "ungradable_image", f"the image is not gradable: {reasons}; retake it")
        return Explanation(result, drawing)

    async def report(
        self,
        upload: Upload,
        model: str,
        method: str = "gradcam",
        alpha: float = 0.5,
        frame: int | None = None,
        site: str | None = None,
    ) -> Report:
        """A one-page PDF of the image, its CAM (when gradable), the assessment and the model's facts.

        ``frame`` of a multi-frame DICOM: the page shows that B-scan and its CAM, headed by the whole
        volume's answer (every B-scan scored as /predict/volume does) and its deciding B-scans.
        """
        method = parse_method(method)
        requested, profile = self.check(model), self.site(site)

        def draw(served: ServedModel, prepared: PreparedImage, _submit: Submit) -> Awaitable[Scored]:
            decision = self._decision(served, profile)
            return run_in(
                self.cam_pool, self._draw, served, prepared, None, method, alpha, None, CamOptions(), decision
            )

        upload, data = await self._buffered(upload, frame)
        served, prepared, result, drawing = await self._serve(
            "report", upload, requested, draw, frame=frame, profile=profile
        )
        volume = None
        if data is not None and is_dicom(data):  # frame= of a volume; a single image has no volume block
            scored = await self._score_volume(served, data)
            if scored.assessment.n_frames > 1:
                volume = _volume_summary(scored, frame)
        rid = request_id_var.get()
        # PDF layout and image encoding stay off the event loop.
        points = self._decision(served, profile).points((served.meta.extra or {}).get("operating_points") or {})
        pdf = await run_in(self.cam_pool, _report_pdf, served, prepared, result, drawing, rid, volume, points)
        return Report(result, pdf, rid)

    async def classify_volume(self, upload: Upload, model: str) -> VolumeAssessment:
        """Every B-scan of a multi-frame OCT DICOM through the gate and the model, then one volume answer.

        ``model``: an OCT model, its task alias or ``auto`` (a volume is always OCT: ``auto`` is the
        OCT default, and the gate still checks every frame). Gradable frames are scored in the model's
        micro-batches; ungradable and non-OCT frames are counted and skipped (``retina.volume``).
        A volume whose frames are mostly not OCT is refused like a single image (422).
        """
        start = time.perf_counter()
        requested = self.check(model)
        served = requested or self.store.resolve("oct")
        name = requested.id if requested else AUTO
        if served.task != "oct":
            raise invalid_parameter(f"model {served.id!r} reads {served.task} images; volumes are OCT (model=oct)")
        try:
            data = await read_upload(upload, self.settings.max_volume_upload_bytes)
            scored = await self._score_volume(served, data)
        except ServiceError as e:
            self._count(name, "predict_volume", e.code, start)
            raise
        result = scored.assessment
        outcome = "ok" if result.volume.gradable else "ungradable"
        await audit_prediction(
            self.audit, "predict_volume", served, result.volume.to_dict(), scored.sha256, outcome=outcome
        )
        if result.volume.label is not None:
            self.metrics.predictions.labels(served.id, result.volume.label).inc()
        self._count(served.id, "predict_volume", outcome, start)
        return result

    async def _buffered(self, upload: Upload, frame: int | None) -> tuple[Upload, bytes | None]:
        """With ``frame``: the upload read once (up to the volume limit) and replayed; else as it came."""
        if frame is None:
            return upload, None
        data = await read_upload(upload, self.settings.max_volume_upload_bytes)
        return Replay(upload.filename, data), data

    async def _score_volume(self, served: ServedModel, data: bytes) -> ScoredVolume:
        """Decode, gate and prepare every frame (decode pool), score the graded ones (micro-batcher), assess."""
        s = self.settings
        start = time.perf_counter()
        cost = await self._decode_cost(data)  # one frame's: frames are decoded one at a time
        with self.admission.reserve(cost + len(data), "volume"):
            decoded: DecodedVolume = await run_in(
                self.decode_pool, decode_volume, data, Limits.of(s), self.store.gate, served.preprocess, served.task
            )
        self.metrics.decode_seconds.labels(served.id).observe(time.perf_counter() - start)
        await self._refuse_volume(served, decoded)
        # All graded frames are queued at once: the batcher runs them max_batch at a time, sharing
        # forward passes with concurrent /predict requests.
        futures = {i: served.batcher.submit(x) for i, x in decoded.prepared.items()}
        results = {i: await self._forward(f) for i, f in futures.items()}
        probs = {i: r.probabilities for i, r in results.items()}
        ms = sum(r.forward_ms / max(r.batch_size, 1) for r in results.values())
        assessment = assess_volume(
            served.id,
            served.meta,
            decoded.verdicts,
            probs,
            s,
            rule=s.volume_rule,
            min_frames=s.volume_min_gradable_frames,
            min_fraction=s.volume_min_gradable_fraction,
            inference_ms=ms,
        )
        return ScoredVolume(assessment, decoded.prepared, decoded.sha256)

    async def _refuse_volume(self, served: ServedModel, decoded: DecodedVolume) -> None:
        """422 (audited) when most frames are not OCT: ``wrong_modality`` (mostly fundus) or ``not_retinal_image``."""
        seen = [v.modality for v in decoded.verdicts if v is not None]
        if not seen or 2 * seen.count(served.task) >= len(decoded.verdicts):
            return
        fundus, other = seen.count("fundus"), seen.count("other")
        n = len(decoded.verdicts)
        if fundus > other:
            code = "wrong_modality"
            detail = f"{fundus} of {n} frames look like colour fundus photos; volumes are OCT B-scans"
        else:
            code = "not_retinal_image"
            detail = f"{other} of {n} frames do not look like OCT B-scans or fundus photos. Nothing was predicted."
        await audit_prediction(self.audit, "predict_volume", served, None, decoded.sha256, outcome=code)
        raise ServiceError(422, code, detail)

    # ----------------------------------------------------------------- the one path
    async def _serve(
        self,
        endpoint: str,
        upload: Upload,
        requested: ServedModel | None,
        score: Scorer,
        *,
        hold: bool = False,
        frame: int | None = None,
        profile: SiteProfile | None = None,
    ) -> tuple[ServedModel, PreparedImage, Assessment, Any]:
        """Intake, scoring (if gradable), assessment, audit and metrics of one image.

        ``hold``: tell the requested model's batcher that this request is on its way, so it may
        hold a batch open a few ms while it decodes. ``profile``: the request's site profile (fundus
        answers only). Returns the scorer's extra (None when ungradable).
        """
        start = time.perf_counter()
        name = requested.id if requested else AUTO
        try:
            with _expecting(requested if hold else None) as submit:
                served, prepared = await self._intake(requested, upload, endpoint, frame)
                decision = self._decision(served, profile)  # before scoring: a mismatched site is a 422
                gradable = prepared.gate is None or prepared.gate.gradable
                pending = score(served, prepared, submit or served.batcher.submit) if gradable else None
            scored = await pending if pending is not None else None
        except ServiceError as e:
            self._count(name, endpoint, e.code, start)
            raise
        if scored is None:
            assert prepared.gate is not None
            result = ungradable(served.id, served.meta, prepared.gate, profile=decision.name)
            await self._audit(endpoint, served, result, prepared.sha256)
            self._count(served.id, endpoint, "ungradable", start)
            return served, prepared, result, None
        probs = decision.probabilities(served.temperature, scored.probabilities)
        thresholds = decision.thresholds(self.settings)
        result = grade(served.id, served.meta, probs, scored.ms, thresholds, prepared.gate, decision.name)
        await self._audit(endpoint, served, result, prepared.sha256)
        self.metrics.predictions.labels(served.id, result.label).inc()
        self._count(served.id, endpoint, "ok", start)
        return served, prepared, result, scored.extra

    async def _intake(
        self, requested: ServedModel | None, upload: Upload, endpoint: str, frame: int | None = None
    ) -> tuple[ServedModel, PreparedImage]:
        """Read, decode, gate and prepare one upload; ``requested`` None (``auto``) picks by the detected modality.

        Refusals by the gate are audited too, so the log shows every image that was turned away and
        why. An ungradable image comes back prepared, with ``prepared.gate.gradable`` False.
        """
        start = time.perf_counter()
        s = self.settings
        # frame=: one B-scan of a volume, read up to the volume limit; a PNG/JPEG keeps the image limits.
        data = await read_upload(upload, s.max_upload_bytes if frame is None else s.max_volume_upload_bytes)
        routes: list[Route[ServedModel]] = []

        def choose(verdict: GateResult | None) -> PreprocessSpec | None:
            # In the decode thread: the domain step's routing (pure look-ups, check() made sure auto has a
            # gate), so the full-size image is prepared for the chosen model without waiting for the event loop.
            chosen = route(verdict, requested, self.store)
            routes.append(chosen)
            return chosen.model.preprocess if chosen.model is not None and chosen.refusal is None else None

        cost = await self._decode_cost(data)
        with self.admission.reserve(cost + len(data), "image"):
            checked = await run_in(
                self.decode_pool, decode_gate_prepare, data, Limits.of(s), self.store.gate, choose, frame
            )
        del data
        served, refused = routes[0].model, routes[0].refusal  # served None: model=auto and not retinal
        if refused is not None:
            gate_seen = {"gate": refused.gate.to_dict()}
            await audit_prediction(self.audit, endpoint, served, gate_seen, checked.sha256, outcome=refused.code)
            raise ServiceError(422, refused.code, refused.detail)
        assert served is not None and checked.prepared is not None
        self.metrics.decode_seconds.labels(served.id).observe(time.perf_counter() - start)
        return served, checked.prepared

    def _batched(self, served: ServedModel, prepared: PreparedImage, submit: Submit) -> Awaitable[Scored]:
        """Queue the image on the micro-batcher now; the awaitable resolves when its batch ran."""
        future = submit(prepared.pixels)

        async def wait() -> Scored:
            result = await self._forward(future)
            return Scored(result.probabilities, result.forward_ms)

        return wait()

    def _forward(self, future: Future[BatchResult]) -> Awaitable[BatchResult]:
        return wait_forward(future, self.settings.inference_timeout_s)

    async def _decode_cost(self, data: bytes) -> int:
        """The decode's peak memory by its header (``retina.memory``), for the admission budget; 0 if unreadable.

        An unreadable header is not refused here: the decode that follows says what is wrong with it.
        """
        try:
            return (await run_in(self.header_pool, estimate, data)).bytes
        except ImageDecodeError as e:
            if e.code == "dicom_header_too_large":
                raise from_decode_error(e) from e
            return 0

    def _decision(self, served: ServedModel, profile: SiteProfile | None) -> Decision:
        """The site profile for this model's answer (422 when it was fitted for another fundus model)."""
        return decision_for(served.task, served.id, served.class_names, profile)

    def _draw(
        self,
        served: ServedModel,
        prepared: PreparedImage,
        target: int | None,
        method: str,
        alpha: float,
        out_size: tuple[int, int] | None,
        options: CamOptions,
        decision: Decision,
    ) -> Scored:
        """CAM of ``prepared`` for ``target`` (None = the label the answer shows), rendered (CAM pool)."""
        label_of = label_chooser(served.task, served.class_names, decision.thresholds(self.settings), served.meta)

        def choose(probs: np.ndarray) -> int:
            # The label the answer will show: the site's temperature and points, as _serve applies them.
            return label_of(decision.probabilities(served.temperature, probs))

        batch = self.settings.scorecam_batch_size
        probs = None
        if served.engine_info.name != "torch":
            # The answer's probabilities come from the served engine, exactly as /predict's do (int8
            # can move a near-tie); torch, which CAM needs for gradients, only draws that label's map.
            timeout = self.settings.inference_timeout_s
            probs = served.batcher.submit(prepared.pixels).result(timeout=timeout).probabilities
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


def _volume_summary(scored: ScoredVolume, frame: int) -> VolumeSummary:
    """What the report prints about the whole volume: its answer and its deciding B-scans' model views."""
    a = scored.assessment
    body = a.volume.to_dict()
    thumbs = []
    for i in a.deciding:
        view = scored.prepared[i].permute(1, 2, 0).numpy()
        view = np.repeat(view, 3, axis=2) if view.shape[2] == 1 else view
        p = (a.frames[i].probabilities or {}).get(a.volume.label or "", 0.0)
        thumbs.append((i, float(p), png_bytes(np.ascontiguousarray(view))))
    return VolumeSummary(
        shown_frame=frame,
        n_frames=a.n_frames,
        n_graded=a.n_graded,
        n_skipped=a.n_ungradable + a.n_not_oct,
        rule_text=RULE_TEXT[a.rule],
        label=a.volume.label,
        confidence=a.volume.confidence,
        referral=body["referral"] or {},
        deciding=tuple(thumbs),
    )


def _report_pdf(
    served: ServedModel,
    prepared: PreparedImage,
    result: Assessment,
    drawing: Drawing | None,
    request_id: str,
    volume: VolumeSummary | None = None,
    operating_points: dict[str, Any] | None = None,
) -> bytes:
    """The PDF of one assessment (blocking: the CAM pool); ``operating_points``: the site profile's, if one decided."""
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
        # One B-scan of a volume: the page is headed by the volume's referral, the decision a clinic takes.
        referral=(volume.referral if volume is not None else body["referral"]) or dict(NO_POLICY),
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
        operating_points=operating_points
        if operating_points is not None
        else (served.meta.extra or {}).get("operating_points") or {},
        volume=volume,
    )
    return build_report(inp)
