"""HTTP client of the RetinaScope backend: the only frontend module that talks to the network.

Every transport or HTTP failure becomes a :class:`BackendError` carrying a short, plain message
(the backend's own ``detail`` when it sent one), so the UI can show ``st.error(err.message)``
and never a traceback. The client holds no Streamlit state; caching lives in
``frontend/cache.py``.

Backend contract (see the backend's OpenAPI at ``/docs``):

- ``GET /ready`` -> 200, or 503 ``{"error": "not_ready", "detail": ...}``
- ``GET /models`` -> ``[{id, task, arch, classes, input_size, channels, version, metrics, figures, default,
  temperature, calibration: {method, fitted_on, ece_before, ece_after, ...}, operating_points,
  served_thresholds, informative, ...}]``
- ``POST /predict?model=ID`` (multipart ``file``; ``ID`` may be ``auto``: the backend detects OCT vs
  fundus and answers with that task's default model) -> ``{model, model_version, task, gradable, label,
  confidence, probabilities, inference_ms, derived, referral, gate}``; ``label``, ``confidence`` and
  ``probabilities`` are null when ``gradable`` is false (``gate.reasons`` says why).
- ``POST /gradcam?model=ID&method=M&target=C&alpha=A&size=S&format=json`` (multipart ``file``) ->
  ``{label, confidence, probabilities, target, method, overlay_png, heatmap_png}`` (base64 PNGs)
- ``POST /report?model=ID&method=M`` (multipart ``file``) -> ``application/pdf``, a one-page report.
- errors: ``{"error": CODE, "detail": TEXT}`` with a 4xx/5xx status; the image gate adds 422
  ``not_retinal_image``, ``wrong_modality`` and (``/gradcam``) ``ungradable_image``; ``/report`` of an
  ungradable image is a PDF that says so.
"""

from __future__ import annotations

import base64
import binascii
import logging
import mimetypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import requests

log = logging.getLogger(__name__)

DEFAULT_BACKEND_URL = "http://localhost:8000"
# The CAM methods the backend serves (pytorch-grad-cam names); the first is the default.
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "scorecam")
# Display names of the backend's tasks, in the order the UI offers them.
TASK_LABELS: dict[str, str] = {"oct": "OCT", "fundus": "Fundus"}
# ``?model=auto``: the backend picks the task from the image (OCT B-scan or fundus photo).
AUTO_MODEL = "auto"
# 422 codes of the backend's image gate: a problem with the picture, not with the service.
GATE_ERRORS: tuple[str, ...] = ("not_retinal_image", "wrong_modality", "ungradable_image")
# The status probe must stay snappy even when predictions may take long: it runs on every rerun.
READY_READ_TIMEOUT_S = 5.0


# ----------------------------------------------------------------------------- settings


def _positive_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class ClientSettings:
    """Where the backend is and how long to wait for it.

    Attributes:
        backend_url: base URL without trailing slash (``RETINA_BACKEND_URL``; compose sets
            ``http://backend:8000``).
        api_key: sent as ``X-API-Key`` when set (``RETINA_API_KEY``).
        timeout_s: read timeout of prediction and CAM requests in seconds (``RETINA_TIMEOUT_S``).
        connect_timeout_s: TCP connect timeout in seconds (``RETINA_CONNECT_TIMEOUT_S``).
    """

    backend_url: str = DEFAULT_BACKEND_URL
    api_key: str | None = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 3.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        """Read ``RETINA_*`` variables; raises ``ValueError`` with a readable message on bad values."""
        env = os.environ if environ is None else environ
        url = env.get("RETINA_BACKEND_URL", "").strip() or DEFAULT_BACKEND_URL
        if "://" not in url:
            # "backend:8000" is an easy slip in compose files; requests would reject it cryptically.
            url = "http://" + url
        return cls(
            backend_url=url.rstrip("/"),
            api_key=env.get("RETINA_API_KEY", "").strip() or None,
            timeout_s=_positive_float(env, "RETINA_TIMEOUT_S", cls.timeout_s),
            connect_timeout_s=_positive_float(env, "RETINA_CONNECT_TIMEOUT_S", cls.connect_timeout_s),
        )


# ----------------------------------------------------------------------------- errors


class BackendError(Exception):
    """The backend refused a request or sent something unusable.

    Attributes:
        code: the backend's ``error`` code (``unknown_model``, ``invalid_image``...) or a client-side
            one (``unreachable``, ``timeout``, ``bad_response``).
        detail: plain-language reason, shown to the user as is.
        status: HTTP status, ``None`` when no HTTP answer arrived.
    """

    def __init__(self, code: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status

    @property
    def message(self) -> str:
        """What the UI shows."""
        return self.detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable (Streamlit may copy objects across threads).
        return (type(self), (self.code, self.detail, self.status))


class BackendUnreachable(BackendError):
    """No HTTP answer: connection refused, unknown host, connect timeout, dropped connection."""

    def __init__(self, code: str = "unreachable", detail: str = "cannot connect", status: int | None = None) -> None:
        super().__init__(code, detail, status)

    @property
    def message(self) -> str:
        return f"Backend unreachable: {self.detail}"


class BackendTimeout(BackendUnreachable):
    """Connected, but the answer did not come within the read timeout."""

    def __init__(self, code: str = "timeout", detail: str = "no answer in time", status: int | None = None) -> None:
        super().__init__(code, detail, status)

    @property
    def message(self) -> str:
        return f"Backend too slow: {self.detail}"


# ----------------------------------------------------------------------------- response types


@dataclass(frozen=True)
class ReadyStatus:
    """Outcome of ``GET /ready``; :attr:`text` is the sidebar line (other tests key on its wording)."""

    state: Literal["ready", "not_ready", "unreachable"]
    detail: str = ""
    # The backend's per-file upload limit in MB (10^6 B), from its /ready body; None when it did not say.
    max_upload_mb: float | None = None

    @property
    def text(self) -> str:
        if self.state == "ready":
            return "Backend ready"
        if self.state == "not_ready":
            return f"Backend not ready: {self.detail}"
        return f"Backend unreachable: {self.detail}"

    @property
    def reachable(self) -> bool:
        return self.state != "unreachable"


@dataclass(frozen=True)
class ModelInfo:
    """One entry of ``GET /models``.

    Attributes:
        classes: output class names in logit order.
        input_size: side of the square model input in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        metrics: the training run's own record as the checkpoint stores it (nested dict, may be empty);
            shown only when the backend sends no ``figures`` (an older backend).
        figures: the shipped file's headline figures, one entry per evaluation set in the model card's
            order: ``{name, kind, title, heading, n, n_patients, figures: [{key, label, value, ci95, text}]}``
            (``text`` is how the card and the PDF print the figure: ``0.921 [0.900, 0.940]``).
        card: model card, markdown text or a dict of fields, or ``None``.
        temperature: softmax calibration temperature (``None``: not reported).
        calibration: how the temperature was fitted (``method``, ``fitted_on``) and the expected
            calibration error before and after it (``ece_before``, ``ece_after``, in [0, 1]); may be empty.
        operating_points: the referral operating points stored in the checkpoint, by name (``refer``,
            ``urgent``, ``routine``): ``{threshold, score, positive, target_sensitivity, fitted_on, fit,
            checks}``, where ``fit`` and each ``checks[name]`` hold ``sensitivity``, ``specificity``, their
            ``*_ci95`` intervals, ``n`` and ``n_positive``; empty when none was fitted.
        served_thresholds: the referral thresholds the backend applies, by point name (a
            ``RETINA_REFERRAL_*`` setting overrides the checkpoint's operating point); empty: no policy.
        informative: ``False`` when the model's validated balanced accuracy interval includes chance;
            its answers then carry the referral level ``not_informative``, never a referral.
        loaded: ``False`` for a registered model the backend failed to load (``error`` says why).
    """

    id: str
    task: str
    arch: str = ""
    classes: tuple[str, ...] = ()
    input_size: int | None = None
    channels: int | None = None
    version: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: tuple[dict[str, Any], ...] = ()
    default: bool = False
    description: str = ""
    card: Any = None
    loaded: bool = True
    error: str | None = None
    temperature: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    operating_points: dict[str, dict[str, Any]] = field(default_factory=dict)
    served_thresholds: dict[str, float] = field(default_factory=dict)
    informative: bool = True
    # Site profiles fitted for this model (fundus): ``{name, loaded, default, error, profile}`` each.
    sites: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelInfo:
        return cls(
            id=str(d["id"]),
            task=str(d["task"]),
            arch=str(d.get("arch") or ""),
            classes=tuple(str(c) for c in d.get("classes") or ()),
            input_size=d.get("input_size"),
            channels=d.get("channels"),
            version=str(d.get("version") or ""),
            metrics=dict(d.get("metrics") or {}),
            figures=tuple(dict(e) for e in d.get("figures") or () if isinstance(e, Mapping)),
            default=bool(d.get("default", False)),
            description=str(d.get("description") or ""),
            card=d.get("card"),
            loaded=bool(d.get("loaded", True)),
            error=None if d.get("error") is None else str(d["error"]),
            temperature=_opt_float(d.get("temperature")),
            calibration=dict(d.get("calibration") or {}),
            operating_points={
                str(k): dict(v) for k, v in (d.get("operating_points") or {}).items() if isinstance(v, Mapping)
            },
            served_thresholds={
                str(k): float(v) for k, v in (d.get("served_thresholds") or {}).items() if v is not None
            },
            informative=bool(d.get("informative", True)),
            sites=tuple(dict(s) for s in d.get("sites") or () if isinstance(s, Mapping) and "name" in s),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Referral:
    """What to do with the result (backend ``Referral``), decided from the calibrated probabilities.

    Attributes:
        level: ``urgent``, ``routine``, ``observation`` (OCT); ``urgent``, ``refer``,
            ``rescreen_12_months`` (fundus); ``ungradable`` (no assessment); ``not_informative`` (the
            model's validated accuracy is not distinguishable from chance: no advice). Unknown levels are kept.
        advice: one sentence for the reader.
        reason: the rule that fired, e.g. ``P(grade >= 2) = 0.71 >= 0.50`` (the gate's reasons when ungradable).
        probability: the probability compared with ``threshold``, both in [0, 1]; ``None`` when ungradable
            or not informative.
        note: the research-use disclaimer that must be shown beside the advice.
    """

    level: str
    advice: str = ""
    reason: str = ""
    probability: float | None = None
    threshold: float | None = None
    note: str = ""
    profile: str = "default"  # the site profile whose operating points decided it, or "default"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Referral:
        return cls(
            level=str(d["level"]),
            advice=str(d.get("advice") or ""),
            reason=str(d.get("reason") or ""),
            probability=_opt_float(d.get("probability")),
            threshold=_opt_float(d.get("threshold")),
            note=str(d.get("note") or ""),
            profile=str(d.get("profile") or "default"),
        )


@dataclass(frozen=True)
class GateInfo:
    """What the backend's image gate found (backend ``GateInfo``).

    Attributes:
        modality: ``oct``, ``fundus`` or ``other``.
        gradable: ``False`` when the image is too dark, blurred, over-exposed or incomplete to grade.
        reasons: why it is not gradable (empty when gradable).
        probabilities: the gate's probability of each kind (``oct``, ``fundus``, ``other``).
        quality: quality measures of the detected modality.
        quality_grade: the learned quality grade of a fundus photo (``Good``, ``Usable``, ``Reject``), else None.
    """

    modality: str
    gradable: bool = True
    reasons: tuple[str, ...] = ()
    probabilities: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    quality_grade: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GateInfo:
        return cls(
            modality=str(d.get("modality") or "other"),
            gradable=bool(d.get("gradable", True)),
            reasons=tuple(str(r) for r in d.get("reasons") or ()),
            probabilities={str(k): float(v) for k, v in (d.get("probabilities") or {}).items()},
            quality={str(k): float(v) for k, v in (d.get("quality") or {}).items()},
            quality_grade=str(d["quality_grade"]) if d.get("quality_grade") else None,
        )


@dataclass(frozen=True)
class Prediction:
    """``POST /predict`` result.

    ``probabilities`` are in [0, 1], sum to 1 and are keyed by class name. When ``gradable`` is
    ``False`` the backend gives no diagnosis: ``label``, ``confidence`` and ``probabilities`` are
    ``None`` and :attr:`reasons` says why. ``model`` and ``task`` name the model that answered
    (also for ``?model=auto``).
    """

    model: str
    model_version: str
    task: str
    label: str | None
    confidence: float | None
    probabilities: dict[str, float] | None
    inference_ms: float | None = None
    derived: dict[str, float] | None = None
    gradable: bool = True
    referral: Referral | None = None
    gate: GateInfo | None = None

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the image is not gradable: the gate's reasons (empty when gradable or unknown)."""
        return self.gate.reasons if self.gate else ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Prediction:
        derived = d.get("derived")
        gradable = bool(d.get("gradable", True))
        probs = d.get("probabilities")
        if gradable and (d.get("label") is None or d.get("confidence") is None or probs is None):
            # A graded answer without a diagnosis is a broken contract, not an ungradable image.
            raise ValueError("a gradable prediction without label, confidence or probabilities")
        referral, gate = d.get("referral"), d.get("gate")
        return cls(
            model=str(d["model"]),
            model_version=str(d.get("model_version") or ""),
            task=str(d.get("task") or ""),
            label=None if d.get("label") is None else str(d["label"]),
            confidence=_opt_float(d.get("confidence")),
            probabilities=None if probs is None else {str(k): float(v) for k, v in probs.items()},
            inference_ms=_opt_float(d.get("inference_ms")),
            derived=None if not derived else {str(k): float(v) for k, v in derived.items()},
            gradable=gradable,
            referral=None if not referral else Referral.from_json(referral),
            gate=None if not gate else GateInfo.from_json(gate),
        )


@dataclass(frozen=True)
class VolumeFrame:
    """One B-scan of a ``/predict/volume`` answer: ``graded`` (own label and probabilities) or skipped."""

    index: int
    status: str
    label: str | None
    probabilities: dict[str, float] | None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class VolumeResult:
    """``POST /predict/volume`` result: the volume's answer as a :class:`Prediction`, then every B-scan.

    ``deciding_frames``: 0-based indices of the B-scans that drove the volume label, highest first.
    """

    prediction: Prediction
    rule: str
    rule_text: str
    n_frames: int
    n_graded: int
    n_ungradable: int
    n_not_oct: int
    needed_graded: int
    deciding_frames: tuple[int, ...]
    frames: tuple[VolumeFrame, ...]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VolumeResult:
        frames = tuple(
            VolumeFrame(
                index=int(f["index"]),
                status=str(f["status"]),
                label=None if f.get("label") is None else str(f["label"]),
                probabilities=None
                if f.get("probabilities") is None
                else {str(k): float(v) for k, v in f["probabilities"].items()},
                reasons=tuple(str(r) for r in f.get("reasons") or ()),
            )
            for f in d["frames"]
        )
        if [f.index for f in frames] != list(range(int(d["n_frames"]))):
            raise ValueError("the volume's frames are not 0..n_frames-1 in order")
        return cls(
            prediction=Prediction.from_json(d),
            rule=str(d.get("rule") or ""),
            rule_text=str(d.get("rule_text") or ""),
            n_frames=int(d["n_frames"]),
            n_graded=int(d["n_graded"]),
            n_ungradable=int(d.get("n_ungradable") or 0),
            n_not_oct=int(d.get("n_not_oct") or 0),
            needed_graded=int(d.get("needed_graded") or 0),
            deciding_frames=tuple(int(i) for i in d.get("deciding_frames") or ()),
            frames=frames,
        )


def is_volume_refusal(err: BackendError) -> bool:
    """True when a single-image endpoint refused a multi-frame file (an OCT volume): send it to /predict/volume.

    The backend's contract: 422 ``invalid_image`` whose detail names ``/predict/volume``.
    """
    return err.code == "invalid_image" and "/predict/volume" in err.detail


@dataclass(frozen=True)
class CamResult:
    """``POST /gradcam?format=json`` result with decoded PNG bytes.

    ``overlay_png`` is the heatmap blended over the image as the model saw it (or upsampled to
    the upload's size with ``size=original``); ``heatmap_png`` is the colour-mapped heatmap alone.
    """

    label: str
    confidence: float
    probabilities: dict[str, float]
    target: str
    method: str
    overlay_png: bytes
    heatmap_png: bytes | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CamResult:
        def png(key: str) -> bytes | None:
            raw = d.get(key)
            if not raw:
                return None
            try:
                return base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise BackendError("bad_response", f"the backend sent an invalid {key}") from None

        overlay = png("overlay_png")
        if overlay is None:
            raise BackendError("bad_response", "the backend sent no overlay image")
        return cls(
            label=str(d["label"]),
            confidence=float(d["confidence"]),
            probabilities={str(k): float(v) for k, v in (d.get("probabilities") or {}).items()},
            target=str(d.get("target") or d["label"]),
            method=str(d.get("method") or ""),
            overlay_png=overlay,
            heatmap_png=png("heatmap_png"),
        )


# ----------------------------------------------------------------------------- client


def _connection_reason(exc: BaseException, url: str) -> str:
    """A one-line reason for a failed connection (requests' own text is a nested repr)."""
    text = str(exc).lower()
    if "refused" in text:
        return f"connection refused at {url}"
    if any(s in text for s in ("name or service not known", "nodename nor servname", "name resolution", "getaddrinfo")):
        return f"cannot resolve the host of {url}"
    if "aborted" in text or "reset" in text or "remote end closed" in text:
        return f"connection to {url} was closed before an answer"
    return f"cannot connect to {url}"


def _upload_limit(resp: requests.Response) -> float | None:
    """``limits.max_upload_mb`` of a /ready body; ``None`` from an older backend that does not state it."""
    try:
        value = float(resp.json()["limits"]["max_upload_mb"])
    except (ValueError, KeyError, TypeError):
        return None
    return value if value > 0 else None


def _form(laterality: Sequence[str]) -> dict[str, list[str]]:
    # requests sends a list value as repeated fields, the order the backend pairs with the files.
    return {"laterality": list(laterality)}


def _content_type(filename: str) -> str:
    # The backend sniffs the bytes (DICOM included); the part's type is informative only.
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


class BackendClient:
    """Blocking client of one backend; safe to share (one ``requests.Session`` with a connection pool)."""

    def __init__(self, settings: ClientSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self._session = session or requests.Session()
        if settings.api_key:
            self._session.headers["X-API-Key"] = settings.api_key

    @property
    def base_url(self) -> str:
        return self.settings.backend_url

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        files: Any = None,
        read_timeout: float | None = None,
        data: Any = None,
    ) -> requests.Response:
        """Send one request; returns a 2xx/3xx response or raises :class:`BackendError`."""
        url = f"{self.base_url}{path}"
        read = self.settings.timeout_s if read_timeout is None else read_timeout
        try:
            resp = self._session.request(
                method, url, params=params, files=files, data=data, timeout=(self.settings.connect_timeout_s, read)
            )
        except requests.exceptions.ConnectTimeout as e:
            raise BackendUnreachable(
                detail=f"no connection to {self.base_url} within {self.settings.connect_timeout_s:g} s"
            ) from e
        except requests.exceptions.Timeout as e:
            raise BackendTimeout(detail=f"no answer from {self.base_url} within {read:g} s") from e
        except requests.exceptions.ConnectionError as e:
            raise BackendUnreachable(detail=_connection_reason(e, self.base_url)) from e
        except requests.exceptions.RequestException as e:
            # Invalid URL and the like: a configuration problem, still no traceback for the user.
            raise BackendUnreachable(detail=f"bad request to {url}: {type(e).__name__}") from e
        if resp.status_code >= 400:
            raise self._http_error(resp)
        return resp

    @staticmethod
    def _http_error(resp: requests.Response) -> BackendError:
        """The backend's ``{"error", "detail"}`` body as an exception; tolerant of other bodies."""
        code, detail = f"http_{resp.status_code}", ""
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            code = str(body.get("error") or code)
            raw = body.get("detail")
            # FastAPI's own validation errors put a list of dicts in "detail".
            if isinstance(raw, list):
                detail = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in raw)
            elif raw is not None:
                detail = str(raw)
        if not detail:
            text = resp.text.strip()
            detail = text[:200] if text and not text.startswith("<") else (resp.reason or "error")
            detail = f"HTTP {resp.status_code}: {detail}"
        return BackendError(code, detail, resp.status_code)

    @staticmethod
    def _json(resp: requests.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise BackendError("bad_response", f"the backend sent no JSON (HTTP {resp.status_code})") from None

    # --- endpoints --------------------------------------------------------------------------

    def ready(self) -> ReadyStatus:
        """``GET /ready``; never raises: every outcome maps to one of the three sidebar states."""
        try:
            resp = self._request("GET", "/ready", read_timeout=min(self.settings.timeout_s, READY_READ_TIMEOUT_S))
        except BackendUnreachable as e:
            return ReadyStatus("unreachable", e.detail)
        except BackendError as e:
            return ReadyStatus("not_ready", e.detail)
        return ReadyStatus("ready", max_upload_mb=_upload_limit(resp))

    def models(self) -> list[ModelInfo]:
        """``GET /models``, in the backend's order."""
        body = self._json(self._request("GET", "/models"))
        if isinstance(body, dict) and "models" in body:  # tolerate a wrapped list
            body = body["models"]
        if not isinstance(body, list):
            raise BackendError("bad_response", "the backend's model list is not a list")
        try:
            return [ModelInfo.from_json(m) for m in body]
        except (KeyError, TypeError, ValueError) as e:
            raise BackendError("bad_response", f"unexpected model entry from the backend: {e}") from None

    def predict(self, data: bytes, filename: str, model: str, *, site: str | None = None) -> Prediction:
        """``POST /predict?model=model[&site=site]`` with the upload ``data`` (raw file bytes)."""
        files = {"file": (filename, data, _content_type(filename))}
        params = {"model": model} | ({"site": site} if site else {})
        body = self._json(self._request("POST", "/predict", params=params, files=files))
        try:
            return Prediction.from_json(body)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BackendError("bad_response", f"unexpected prediction from the backend: {e}") from None

    def predict_exam(
        self, uploads: Sequence[tuple[str, bytes]], laterality: Sequence[str], model: str
    ) -> dict[str, Any]:
        """``POST /predict/exam``: several images of one patient, ``laterality`` one per file (``right``/``left``,
        or ``""`` to let the backend read the DICOM header or the file name). The answer as the backend sent it
        (``patient``, ``eyes``, ``images``): the exam page prints it, it computes nothing."""
        files = [("files", (name, data, _content_type(name))) for name, data in uploads]
        resp = self._request("POST", "/predict/exam", params={"model": model}, files=files, data=_form(laterality))
        body = self._json(resp)
        if not isinstance(body, dict) or not {"patient", "eyes", "images"} <= set(body):
            raise BackendError("bad_response", "unexpected exam answer from the backend")
        return body

    def report_exam(self, uploads: Sequence[tuple[str, bytes]], laterality: Sequence[str], model: str) -> bytes:
        """``POST /report/exam``: the exam's PDF report (``bad_response`` when the answer is not a PDF)."""
        files = [("files", (name, data, _content_type(name))) for name, data in uploads]
        resp = self._request("POST", "/report/exam", params={"model": model}, files=files, data=_form(laterality))
        if not resp.content.startswith(b"%PDF"):
            raise BackendError("bad_response", "the backend's exam report is not a PDF file")
        return resp.content

    def predict_volume(self, data: bytes, filename: str, model: str) -> VolumeResult:
        """``POST /predict/volume?model=model`` with a multi-frame DICOM (an OCT volume)."""
        files = {"file": (filename, data, _content_type(filename))}
        body = self._json(self._request("POST", "/predict/volume", params={"model": model}, files=files))
        try:
            return VolumeResult.from_json(body)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BackendError("bad_response", f"unexpected volume answer from the backend: {e}") from None

    def gradcam(
        self,
        data: bytes,
        filename: str,
        model: str,
        *,
        method: str = CAM_METHODS[0],
        target: str | None = None,
        alpha: float = 0.5,
        size: Literal["input", "original"] = "input",
        frame: int | None = None,
        site: str | None = None,
    ) -> CamResult:
        """``POST /gradcam?format=json``; ``target=None`` explains the predicted class.

        ``alpha`` in [0, 1] is the heatmap's opacity in the overlay; ``frame``: a volume's B-scan (0-based).
        """
        params: dict[str, Any] = {"model": model, "method": method, "alpha": alpha, "size": size, "format": "json"}
        if target is not None:
            params["target"] = target
        if frame is not None:
            params["frame"] = frame
        if site:
            params["site"] = site
        files = {"file": (filename, data, _content_type(filename))}
        body = self._json(self._request("POST", "/gradcam", params=params, files=files))
        try:
            return CamResult.from_json(body)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BackendError("bad_response", f"unexpected CAM answer from the backend: {e}") from None

    def report(
        self,
        data: bytes,
        filename: str,
        model: str,
        *,
        method: str = CAM_METHODS[0],
        frame: int | None = None,
        site: str | None = None,
    ) -> bytes:
        """``POST /report?model=model&method=method``: the one-page PDF report of one upload (``frame``: of
        that B-scan of a volume, headed by the volume's answer).

        Returns the PDF's bytes; raises :class:`BackendError` (``bad_response``) when the answer is
        not ``application/pdf`` (a proxy's HTML page, say), so a broken file is never offered.
        """
        files = {"file": (filename, data, _content_type(filename))}
        params: dict[str, Any] = {"model": model, "method": method}
        if frame is not None:
            params["frame"] = frame
        if site:
            params["site"] = site
        resp = self._request("POST", "/report", params=params, files=files)
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/pdf":
            raise BackendError("bad_response", f"the backend sent {ctype or 'no content type'}, not a PDF report")
        if not resp.content.startswith(b"%PDF"):
            raise BackendError("bad_response", "the backend's PDF report is not a PDF file")
        return resp.content
