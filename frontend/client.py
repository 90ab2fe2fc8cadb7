"""HTTP client of the RetinaScope backend: the only frontend module that talks to the network.

Every transport or HTTP failure becomes a :class:`~frontend.errors.BackendError` carrying a short,
plain message (the backend's own ``detail`` when it sent one), so the UI can show
``st.error(err.message)`` and never a traceback. Every answer is a typed object of
``answers.py``, ``model_info.py`` or ``exam_answer.py``. The client holds no Streamlit state;
caching lives in ``frontend/cache.py``.

Backend contract (see the backend's OpenAPI at ``/docs``):

- ``GET /ready`` -> 200, or 503 ``{"error": "not_ready", "detail": ...}``
- ``GET /models`` -> ``[{id, task, arch, classes, input_size, channels, version, metrics, figures, default,
  temperature, calibration: {method, fitted_on, ece_before, ece_after, ...}, operating_points,
  served_thresholds, operating_point_text, disclaimer, informative, ...}]``
- ``POST /predict?model=ID`` (multipart ``file``; ``ID`` may be ``auto``: the backend detects OCT vs
  fundus and answers with that task's default model) -> ``{model, model_version, task, gradable, label,
  confidence, probabilities, inference_ms, derived, referral: {level, headline, advice, reason, note, ...},
  gate}``; ``label``, ``confidence`` and ``probabilities`` are null when ``gradable`` is false
  (``gate.reasons`` says why).
- ``POST /predict/volume?model=ID`` (a multi-frame OCT DICOM) -> the volume's answer and every B-scan.
- ``POST /predict/exam?model=ID`` (multipart ``files`` and ``laterality``) -> ``{rule, rule_text, patient,
  eyes, images}``, the patient's and each eye's referral with its ``headline`` and ``advice``.
- ``POST /gradcam?model=ID&method=M&target=C&alpha=A&size=S&format=json`` (multipart ``file``) ->
  ``{label, confidence, probabilities, target, method, overlay_png, heatmap_png}`` (base64 PNGs)
- ``POST /report?model=ID&method=M`` (multipart ``file``) -> ``application/pdf``, a one-page report.
- errors: ``{"error": CODE, "detail": TEXT}`` with a 4xx/5xx status; the image gate adds 422
  ``not_retinal_image``, ``wrong_modality`` and (``/gradcam``) ``ungradable_image``; ``/report`` of an
  ungradable image is a PDF that says so.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import requests

from frontend.answers import CamResult, Prediction, VolumeResult
from frontend.errors import BackendError, BackendTimeout, BackendUnreachable
from frontend.exam_answer import ExamAnswer
from frontend.model_info import ModelInfo, ReadyStatus

log = logging.getLogger(__name__)

DEFAULT_BACKEND_URL = "http://localhost:8000"
# The CAM methods the backend serves (pytorch-grad-cam names); the first is the default.
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "scorecam")
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

    def predict_exam(self, uploads: Sequence[tuple[str, bytes]], laterality: Sequence[str], model: str) -> ExamAnswer:
        """``POST /predict/exam``: several images of one patient, ``laterality`` one per file (``right``/``left``,
        or ``""`` to let the backend read the DICOM header or the file name). The exam page prints the answer;
        it computes nothing."""
        files = [("files", (name, data, _content_type(name))) for name, data in uploads]
        resp = self._request("POST", "/predict/exam", params={"model": model}, files=files, data=_form(laterality))
        body = self._json(resp)
        try:
            return ExamAnswer.from_json(body)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BackendError("bad_response", f"unexpected exam answer from the backend: {e}") from None

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
