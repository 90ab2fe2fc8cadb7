"""App factory: lifespan (models onto ``app.state``), middleware, routers, error handlers.

``uvicorn backend.main:app`` serves :data:`app`, built from ``RETINA_*`` environment
variables; tests call ``create_app(Settings(...))``. Nothing heavy happens at import:
models load in the lifespan, so ``/health`` and ``/ready`` can always explain a failure.
"""

from __future__ import annotations

import logging
import random
import re
import typing
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qsl

import fastapi_offline
import torch
from fastapi import APIRouter, FastAPI, Request, params
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.app import errors
from backend.app.api.routes import audit, exam, gradcam, health, models, predict, report
from backend.app.core import auth, multiprocess
from backend.app.core.admission import AdmissionMiddleware
from backend.app.core.config import Settings, get_settings
from backend.app.services.admission import Admission
from backend.app.services.audit import AuditLog
from backend.app.services.metrics import ServiceMetrics
from backend.app.services.model_store import ModelStore
from backend.app.services.pipeline import Pipeline
from backend.app.services.runtime import configure_logging, request_id_var
from retina import __version__

logger = logging.getLogger(__name__)

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Multipart framing around a file (boundaries, part headers, a filename): generous slack.
_MULTIPART_SLACK = 64 * 1024
# Swagger UI and ReDoc assets as installed by the fastapi-offline package: the docs work on a
# network that cannot reach a CDN (FastAPI's default pages load them from jsdelivr).
DOCS_STATIC_DIR = Path(fastapi_offline.__file__).parent / "static"
DOCS_STATIC_URL = "/docs-static"

DESCRIPTION = """
Retinal OCT (CNV / DME / DRUSEN / NORMAL) and colour fundus (DR grade 0-4) classification
with class activation maps. **Research tool, not a medical device.**

Every upload (JPEG, PNG, TIFF, ..., or single-frame DICOM) passes an image gate first: a
non-retinal image is refused (422 `not_retinal_image`), the wrong kind for the model too
(422 `wrong_modality`, naming the right model), and an ungradable one is answered with the
reasons and no diagnosis. `model=auto` picks OCT or fundus by what the gate saw.

* `POST /predict?model=oct` with multipart `file` -> calibrated probabilities + referral advice
* `POST /predict/batch?model=fundus` with repeated `files` -> one result per file
* `POST /predict/volume?model=oct` with a multi-frame OCT DICOM -> every B-scan, one volume answer, deciding B-scans
* `POST /gradcam?model=fundus&method=gradcam` -> PNG overlay (or `format=json`); `frame=` picks a volume's B-scan
* `POST /report?model=auto` -> one-page PDF (image, CAM, probabilities, referral, model metrics)
* `GET /models`, `GET /health`, `GET /ready`, `GET /metrics`
* `GET /audit?since=2025-01-31T00:00Z` (needs the operator key) -> every answered prediction:
  time, request id, key name, model and version, SHA-256 of the upload, result, referral (no pixels)

Errors always have the body `{"error": CODE, "detail": TEXT}`; every response carries
`X-Request-ID`. Send a client key (`RETINA_API_KEYS` / `RETINA_API_KEY`) or the operator key as
`X-API-Key` on everything but `/health`, `/ready`, `/metrics` and the docs. A busy worker answers
503 `overloaded` with `Retry-After`.
"""


class RequestContextMiddleware:
    """X-Request-ID on every response; unhandled exceptions become a logged 500 ``internal_error``.

    The id is the client's ``X-Request-ID`` when it is a short token, else 24 random hex digits. The
    traceback goes to the log with that id; the client sees only the id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        # Not a security token, just a log correlation id: the PRNG is ~100x cheaper than
        # uuid4's os.urandom on this VM, and that showed up in the profile.
        rid = incoming if _REQUEST_ID_OK.match(incoming) else f"{random.getrandbits(96):024x}"
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        token = request_id_var.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), rid)
            if started:
                raise
            response = JSONResponse(
                errors.error_body("internal_error", f"internal server error; quote request id {rid}"),
                status_code=500,
                headers={"X-Request-ID": rid},
            )
            await response(scope, receive, send)
        finally:
            request_id_var.reset(token)


_PREFIX_OK = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


class ProxyPrefixMiddleware:
    """Set the ASGI ``root_path`` a path-stripping reverse proxy hides: ``X-Forwarded-Prefix`` or a fixed one.

    Caddy's ``handle_path /api/*`` forwards ``/api/docs`` as ``/docs``; without the prefix the docs page
    would fetch ``/openapi.json``, which the proxy sends to the UI. The header is honoured only when it is
    a plain path (it is written into the docs HTML); a direct caller who sends one changes only the URLs
    in its own docs page, so it needs no trust. ``RETINA_ROOT_PATH`` is for proxies that cannot set it.
    """

    def __init__(self, app: ASGIApp, root_path: str = "") -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            prefix = Headers(scope=scope).get("x-forwarded-prefix", "").rstrip("/")
            prefix = prefix if _PREFIX_OK.match(prefix) else self.root_path
            if prefix:
                # As uvicorn's --root-path does (ASGI: path includes root_path): routing and mounts
                # (the docs' static files) strip it again.
                raw = scope.get("raw_path") or scope["path"].encode()
                scope = {
                    **scope,
                    "root_path": prefix,
                    "path": prefix + scope["path"],
                    "raw_path": prefix.encode() + raw,
                }
        await self.app(scope, receive, send)


class UploadLimitMiddleware:
    """Refuse oversized uploads before they are spooled: 413 ``file_too_large``.

    A declared ``Content-Length`` over the route's limit is answered at once without
    reading the body; a body streamed without one (chunked) is cut off as soon as the
    running total passes the limit. The exact per-file limit is checked again while the
    handler reads each file (``intake.read_upload``).
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, bytes], tuple[int, str] | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        found = self.limit_for(get_route_path(scope), scope.get("query_string", b""))
        if found is None:
            await self.app(scope, receive, send)
            return
        # The byte limit carries multipart slack; the words name the setting the user can act on.
        limit, words = found
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = JSONResponse(
                errors.error_body("file_too_large", f"request body of {int(declared) / 1e6:.1f} MB is over {words}"),
                status_code=413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException subclass: FastAPI's body parser re-raises it untouched.
                    raise errors.ApiError(413, "file_too_large", f"request body is over {words}")
            return message

        await self.app(scope, limited_receive, send)


ROUTERS = (predict, exam, gradcam, report, models, health, audit)


def upload_routes(routers: Iterable[APIRouter]) -> dict[str, bool]:
    """Path of every route with a file parameter -> whether it takes several (``list[UploadFile]``).

    Read from the routes' own signatures (``api/params.FileParam`` / ``FilesParam``), so a new
    upload route gets its body limit without the middleware being told.
    """
    found: dict[str, bool] = {}
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            files = [p for p in route.dependant.body_params if isinstance(p.field_info, params.File)]
            if files:
                found[route.path] = any(typing.get_origin(p.field_info.annotation) is list for p in files)
    return found


def _body_limits(
    settings: Settings, uploads: dict[str, bool] | None = None
) -> Callable[[str, bytes], tuple[int, str] | None]:
    """(route path, query string) -> (most body bytes, the limit in words): one file per upload route, N on a
    multi-file one, a volume on /predict/volume and on /gradcam, /report with ``frame=`` (one B-scan of a volume).

    ``uploads`` is :func:`upload_routes` (path -> takes several files), by default of :data:`ROUTERS`.
    """
    if uploads is None:
        uploads = upload_routes(m.router for m in ROUTERS)
    per_file = settings.max_upload_bytes + _MULTIPART_SLACK
    mb = f"{settings.max_upload_mb:g} MB"
    file_limit = (per_file, f"the upload limit of {mb} per file (RETINA_MAX_UPLOAD_MB)")
    batch_limit = (
        settings.max_batch_files * per_file,
        f"the limit of {settings.max_batch_files} files of {mb} each (RETINA_MAX_UPLOAD_MB)",
    )
    volume_limit = (
        settings.max_volume_upload_bytes + _MULTIPART_SLACK,
        f"the volume upload limit of {settings.max_volume_upload_mb:g} MB (RETINA_MAX_VOLUME_UPLOAD_MB)",
    )
    other = (_MULTIPART_SLACK, f"the limit of {_MULTIPART_SLACK // 1024} KB for a request without a file")

    def limit_for(path: str, query: bytes = b"") -> tuple[int, str] | None:
        path = path.rstrip("/")
        if path == "/predict/volume":
            return volume_limit
        several = uploads.get(path)
        if several is None:
            return other  # no other route takes a body
        if several:
            return batch_limit
        if path in ("/gradcam", "/report"):
            # The handler reads frame= again; this only decides how many bytes may be spooled.
            framed = any(k == "frame" for k, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True))
            return volume_limit if framed else file_limit
        return file_limit

    return limit_for


def install_offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` from locally served assets; no external host is referenced.

    URLs are prefixed with the request's ``root_path`` (``RETINA_ROOT_PATH``, the proxy's ``/api``) so the
    page loads its script and ``openapi.json`` through the proxy instead of from the UI behind ``/``.
    """
    app.mount(DOCS_STATIC_URL, StaticFiles(directory=DOCS_STATIC_DIR), name="docs-static")
    oauth_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth_redirect}",
            swagger_js_url=f"{root}{DOCS_STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC_URL}/favicon.png",
        )

    @app.get(oauth_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. ``settings`` defaults to the environment (``get_settings()``)."""
    settings = settings or get_settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        auth.check_configured(settings)  # no open API unless explicitly opted out for loopback
        # One intra-op team for the forward passes; decode threads do PIL/numpy work, so
        # torch_threads + decode_threads ~ cores keeps 2 cores from being oversubscribed.
        torch.set_num_threads(settings.torch_threads)
        # Every answered prediction is committed here before its response goes out (routes await it).
        audit_log = AuditLog(settings.audit_db, timeout_s=settings.audit_timeout_s)
        audit_log.start()
        app.state.audit = audit_log
        store = ModelStore(settings, metrics)
        store.load()
        store.start()
        app.state.store = store
        decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="retina-decode")
        # CAM itself is serialised per model (a lock around its hooks); a second thread lets
        # the PNG rendering of one request overlap the CAM of the next.
        cam_pool = ThreadPoolExecutor(max(2, settings.decode_threads), thread_name_prefix="retina-cam")
        app.state.pipeline = Pipeline(store, settings, metrics, audit_log, decode_pool, cam_pool, admission)
        if store.ready:
            logger.info("ready: %s", ", ".join(f"{t}={k}" for t, k in store.defaults.items()))
        else:
            logger.error("STARTED BUT NOT READY: %s", "; ".join(store.not_ready_reasons()))
        try:
            yield
        finally:
            store.stop()
            decode_pool.shutdown(wait=False, cancel_futures=True)
            cam_pool.shutdown(wait=False, cancel_futures=True)
            audit_log.stop()  # last: commits whatever is still queued
            multiprocess.mark_process_dead()  # several workers: this one's live gauges leave the sums

    app = FastAPI(
        title="RetinaScope API",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Replaced by install_offline_docs: FastAPI's own pages load Swagger UI from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_offline_docs(app)
    app.state.settings = settings
    app.state.metrics = metrics
    # One per worker: the middleware counts uploads in flight, the pipeline reserves their decode memory.
    admission = Admission(int(settings.memory_budget_mb * 1e6), settings.max_in_flight)
    app.state.admission = admission
    errors.install(app)
    for module in ROUTERS:
        app.include_router(module.router)

    install_middleware(app, settings, metrics, admission)
    return app


def install_middleware(app: FastAPI, settings: Settings, metrics: ServiceMetrics, admission: Admission) -> None:
    """The middleware stack, outermost first: proxy prefix, request id, CORS, API key, metrics, admission, body limit.

    The last added is the outermost. Auth, admission and the body limit all answer without reading
    the body, so a refused request costs its headers only.
    """
    app.add_middleware(UploadLimitMiddleware, limit_for=_body_limits(settings))
    app.add_middleware(AdmissionMiddleware, admission=admission)
    Instrumentator(
        should_group_status_codes=False,
        excluded_handlers=["/metrics"],
        registry=metrics.registry,
    ).instrument(app).expose(app, endpoint="/metrics", include_in_schema=True, tags=["ops"])
    app.add_middleware(auth.AuthMiddleware, settings=settings)  # inside CORS: a 401 still carries CORS headers
    if settings.cors_origins:
        headers = ["X-Request-ID", "X-Label", "X-Confidence", "X-Model", "X-Target", "X-Method", "X-Referral"]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=headers,
        )
    app.add_middleware(RequestContextMiddleware)
    app.add_middleware(ProxyPrefixMiddleware, root_path=settings.root_path)


app = create_app()
