"""A scriptable stand-in for the backend over real HTTP, for client unit tests.

It speaks the backend's contract (``/ready``, ``/models``, ``/predict``, ``/gradcam``, ``/report``)
on a free loopback port, records every request (path, query, headers, multipart fields) and can be
told to fail (``queue_error``), stall (``delay_s``) or be not ready. Tests of the *real* backend use
``backend_server`` in ``conftest.py`` instead.

The image gate is scripted by the upload's file name, so a test picks the case by naming the file:

- ``notretina`` in the name: 422 ``not_retinal_image`` (every image route);
- ``dark`` in the name: an ungradable image: ``/predict`` answers ``gradable: false`` with the
  gate's reasons and no diagnosis, ``/gradcam`` refuses with 422 ``ungradable_image``, ``/report``
  still makes a PDF (as the backend does);
- ``fundus`` in the name: a fundus photo, anything else an OCT B-scan; sent to a model of the
  other task: 422 ``wrong_modality``. ``?model=auto`` picks the default model of the detected task.

A model listed with ``informative: false`` answers gradable images with the referral level
``not_informative`` (no advice), as the backend does for a model no better than chance.

The words follow the issue-28 contract: every referral carries the backend's ``headline`` (``HEADLINES``)
and ``note`` (the one ``NOTE``), every model its ``disclaimer`` and ``operating_point_text``. With
``contract_words = False`` the fake answers as an older backend that sends none of the four.
``/predict/exam`` and ``/report/exam`` answer an exam (eyes from the ``laterality`` form field), and a
file with ``volume`` in its name is a multi-frame DICOM: ``/predict`` refuses it naming ``/predict/volume``,
which answers a three-B-scan volume.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fpdf import FPDF
from PIL import Image

from retina.referral import ADVICE, DISCLAIMER, NO_POLICY
from retina.referral import HEADLINES as REFERRAL_HEADLINES

OCT = ["CNV", "DME", "DRUSEN", "NORMAL"]
DR = ["No DR", "Mild", "Moderate", "Severe", "Proliferative"]
DARK_REASONS = ["too dark: retina brightness 0.03 < 0.10", "blurred: sharpness 0.8 < 2.0"]
# The backend's words come from their one author (retina.referral), never retyped here: a copy had
# already drifted once ("Ungradable image" against the backend's "Not gradable").
NOTE = DISCLAIMER
NOT_INFORMATIVE_ADVICE = ADVICE["not_informative"]
NO_POLICY_NOTE = str(NO_POLICY["advice"])
UNGRADABLE_ADVICE = ADVICE["ungradable"]
HEADLINES = dict(REFERRAL_HEADLINES)
# The backend's operating-point sentences, by model id and point name.
OPERATING_POINT_TEXT: dict[str, dict[str, str]] = {
    "oct-test": {
        "urgent": "Urgent referral when P(CNV) + P(DME) >= 0.50 (a service setting, not a validated operating point)",
        "routine": "Routine referral when P(CNV) + P(DME) + P(DRUSEN) >= 0.50 (a service setting, not a validated "
        "operating point)",
    },
    "fundus-test": {
        "refer": "Refer when P(grade >= 2) >= 0.23, chosen on the fundus-train validation split (742 images, 371 "
        "patients): sensitivity 0.87 [0.80, 0.92], specificity 0.55 [0.51, 0.59]. At this threshold on idrid: "
        "sensitivity 0.80, specificity 0.61 (n = 103, 61 positive).",
        "urgent": "Urgent referral when P(proliferative) >= 0.50 (a service setting, not a validated operating point)",
    },
}
# The fields of the contract an older backend does not send.
CONTRACT_WORDS = ("headline", "disclaimer", "operating_point_text")
# The fundus model's referral operating point, as training/evaluate/thresholds.py stores it.
FUNDUS_REFER_POINT: dict[str, Any] = {
    "threshold": 0.23,
    "score": "P(Moderate + Severe + Proliferative)",
    "positive": "referable DR (grade >= 2)",
    "target_sensitivity": 0.87,
    "fitted_on": "fundus-train validation split (742 images, 371 patients)",
    "fit": {
        "sensitivity": 0.871,
        "sensitivity_ci95": [0.803, 0.924],
        "specificity": 0.553,
        "specificity_ci95": [0.512, 0.594],
        "n": 742,
        "n_positive": 163,
    },
    "checks": {
        "idrid": {
            "sensitivity": 0.802,
            "sensitivity_ci95": [0.718, 0.871],
            "specificity": 0.611,
            "specificity_ci95": [0.497, 0.716],
            "n": 103,
            "n_positive": 61,
        }
    },
}


def png_bytes(size: int = 8, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def pdf_bytes(*lines: str) -> bytes:
    """A real one-page PDF (fpdf2) carrying ``lines``: what ``/report`` answers."""
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    for line in lines:
        pdf.cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def oct_referral(probs: dict[str, float]) -> dict[str, Any]:
    """The backend's OCT policy (default thresholds 0.5), cumulative by severity."""
    urgent = probs["CNV"] + probs["DME"]
    anything = urgent + probs["DRUSEN"]
    if urgent >= 0.5:
        level, what, p = "urgent", "Urgent referral to a retina specialist: CNV or DME suspected.", urgent
    elif anything >= 0.5:
        level, what, p = "routine", "Routine referral to an ophthalmologist: drusen suspected.", anything
    else:
        level, what, p = "observation", "No referral suggested: routine observation.", anything
    op = ">=" if level != "observation" else "<"
    return referral(level, what, f"P = {p:.2f} {op} 0.50", p, 0.5)


def referral(level: str, advice: str, reason: str, p: float | None = None, t: float | None = None) -> dict[str, Any]:
    """A ``Referral`` body as the backend writes it: the level's headline, the advice and the one note."""
    return {
        "level": level,
        "headline": HEADLINES[level],
        "advice": advice,
        "reason": reason,
        "probability": p,
        "threshold": t,
        "note": NOTE,
        "profile": "default",
    }


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    fields: dict[str, list[tuple[str, bytes, str]]] = field(default_factory=dict)


@dataclass
class FakeBackend:
    """State of the fake; mutate it from the test while the server runs.

    ``errors`` answer the next requests in order, whatever their path; ``fail[path]`` answers every
    request to ``path`` until removed.
    """

    ready: bool = True
    max_upload_mb: float = 10.0
    not_ready_detail: str = "model oct-test: checkpoint missing"
    delay_s: float = 0.0
    errors: list[tuple[int, Any]] = field(default_factory=list)
    fail: dict[str, tuple[int, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    models: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {
                "id": "oct-test",
                "task": "oct",
                "arch": "resnet18",
                "classes": OCT,
                "input_size": 64,
                "channels": 1,
                "version": "1.2.3",
                "metrics": {"val": {"accuracy": 0.9, "macro_f1": 0.85}, "confusion": [[1, 0], [0, 1]]},
                "default": True,
                "description": "test model",
                "card": "# Card\nTrained on nothing.",
                "temperature": 1.5,
                "calibration": {
                    "method": "temperature",
                    "temperature": 1.5,
                    "fitted_on": "val",
                    "ece_before": 0.081,
                    "ece_after": 0.023,
                },
                # No operating point fitted: the service's default thresholds.
                "operating_points": {},
                "served_thresholds": {"urgent": 0.5, "routine": 0.5},
                "operating_point_text": OPERATING_POINT_TEXT["oct-test"],
                "disclaimer": NOTE,
                "informative": True,
            },
            {
                "id": "fundus-test",
                "task": "fundus",
                "arch": "resnet18",
                "classes": DR,
                "input_size": 128,
                "channels": 3,
                "version": "2.0.0",
                "metrics": {"test": {"accuracy": 0.7}},
                "default": True,
                "description": "test fundus model",
                "card": None,
                "temperature": 1.0,
                "calibration": {},
                "operating_points": {"refer": FUNDUS_REFER_POINT},
                "served_thresholds": {"refer": 0.23, "urgent": 0.5},
                "operating_point_text": OPERATING_POINT_TEXT["fundus-test"],
                "disclaimer": NOTE,
                "informative": True,
            },
        ]
    )
    # What the OCT model answers for a gradable scan (the referral follows from it).
    oct_probs: dict[str, float] = field(default_factory=lambda: dict(zip(OCT, [0.1, 0.2, 0.6, 0.1], strict=True)))
    gate_enabled: bool = True
    referral_enabled: bool = True
    # False: answer as a backend older than the issue-28 contract (no headline, disclaimer, operating_point_text).
    contract_words: bool = True
    # Every PDF /report answered, in order.
    reports: list[bytes] = field(default_factory=list)
    url: str = ""

    def queue_error(self, status: int, body: Any) -> None:
        """The next request (any path) answers ``status`` with ``body`` (dict -> JSON, str -> text)."""
        self.errors.append((status, body))

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]


def _parse_multipart(content_type: str, body: bytes) -> dict[str, list[tuple[str, bytes, str]]]:
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    out: dict[str, list[tuple[str, bytes, str]]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out.setdefault(name, []).append(
            (part.get_filename() or "", part.get_payload(decode=True) or b"", part.get_content_type())
        )
    return out


def _handler(state: FakeBackend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: Any) -> None:
            if isinstance(body, bytes):
                data, ctype = body, "application/pdf"
            elif isinstance(body, str):
                data, ctype = body.encode(), "text/plain"
            else:
                data, ctype = json.dumps(body).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rec = Recorded(method, split.path, query, dict(self.headers.items()))
            if body and "multipart" in (self.headers.get("Content-Type") or ""):
                rec.fields = _parse_multipart(self.headers["Content-Type"], body)
            state.requests.append(rec)
            if state.delay_s:
                time.sleep(state.delay_s)
            if state.errors:
                self._send(*state.errors.pop(0))
                return
            if split.path in state.fail:
                self._send(*state.fail[split.path])
                return
            self._route(method, split.path, query, rec)

        def _route(self, method: str, path: str, query: dict[str, str], rec: Recorded) -> None:
            if path == "/ready":
                if state.ready:
                    self._send(
                        200,
                        {"status": "ready", "limits": {"max_upload_mb": state.max_upload_mb, "max_batch_files": 16}},
                    )
                else:
                    self._send(503, {"error": "not_ready", "detail": state.not_ready_detail})
            elif path == "/models":
                models = state.models
                if not state.referral_enabled:  # as the backend says of a model with no referral policy
                    models = [m | {"served_thresholds": {}, "advice_note": NO_POLICY_NOTE} for m in models]
                self._send(200, _words(state, models))
            elif path in ("/predict/exam", "/report/exam") and method == "POST":
                self._exam_route(path, query, rec)
            elif path in ("/predict", "/predict/volume", "/gradcam", "/report") and method == "POST":
                self._image_route(path, query, rec)
            else:
                self._send(404, {"error": "not_found", "detail": f"no route {path}"})

        def _image_route(self, path: str, query: dict[str, str], rec: Recorded) -> None:
            filename = rec.fields.get("file", [("", b"", "")])[0][0].lower()
            if state.gate_enabled and "notretina" in filename:
                detail = f"{filename} is neither an OCT B-scan nor a colour fundus photo"
                self._send(422, {"error": "not_retinal_image", "detail": detail})
                return
            modality = "fundus" if "fundus" in filename else "oct"
            model = _resolve(state, query.get("model", "oct"), modality)
            if state.gate_enabled and model["task"] != modality:
                detail = f"this looks like a {modality} image; model {model['id']!r} is for {model['task']}"
                self._send(422, {"error": "wrong_modality", "detail": detail + f" (use model={modality} or auto)"})
                return
            body = _prediction(state, model, modality, gradable="dark" not in filename)
            if body["referral"] and model["task"] == "fundus" and query.get("site"):
                # As the service: a site profile decides fundus referrals and the referral names it.
                body["referral"]["profile"] = query["site"]
            if "volume" in filename and path != "/predict/volume":
                detail = f"{filename} is a multi-frame DICOM (a volume): send it to /predict/volume"
                self._send(422, {"error": "invalid_image", "detail": detail})
            elif path == "/predict":
                self._send(200, _words(state, body))
            elif path == "/predict/volume":
                self._send(200, _words(state, volume_answer(body)))
            elif path == "/report":
                title = body["referral"]["level"] if body["referral"] else "no referral"
                pdf = pdf_bytes("RetinaScope report", filename, f"{model['id']} {query.get('method')}", title)
                state.reports.append(pdf)
                self._send(200, pdf)
            elif not body["gradable"]:
                self._send(422, {"error": "ungradable_image", "detail": "; ".join(DARK_REASONS)})
            else:
                self._send(
                    200,
                    {
                        "label": body["label"],
                        "confidence": body["confidence"],
                        "probabilities": {},
                        "target": query.get("target", body["label"]),
                        "method": query.get("method", "gradcam"),
                        "overlay_png": base64.b64encode(png_bytes()).decode(),
                        "heatmap_png": base64.b64encode(png_bytes(colour=(0, 0, 255))).decode(),
                    },
                )

        def _exam_route(self, path: str, query: dict[str, str], rec: Recorded) -> None:
            files = [(name, data) for name, data, _ in rec.fields.get("files", [])]
            laterality = [data.decode() for _, data, _ in rec.fields.get("laterality", [])]
            laterality += [""] * (len(files) - len(laterality))
            if path == "/report/exam":
                self._send(200, pdf_bytes("RetinaScope exam report", *(name for name, _ in files)))
                return
            model = _resolve(state, query.get("model", "auto"), "fundus")
            self._send(200, _words(state, exam_answer(state, model, [n for n, _ in files], laterality)))

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

    return Handler


def _resolve(state: FakeBackend, name: str, modality: str) -> dict[str, Any]:
    """``?model=``: an id, a task alias (its default model) or ``auto`` (the detected task's default).

    Any other id answers as an OCT model of that id: client tests use arbitrary ids.
    """
    task = modality if name == "auto" else name
    for m in state.models:
        if m["id"] == name or (m["task"] == task and m.get("default")):
            return m
    return {"id": name, "task": "oct", "version": "1.2.3"}


def _prediction(state: FakeBackend, model: dict[str, Any], modality: str, gradable: bool) -> dict[str, Any]:
    """The /predict body of ``model`` for an image of ``modality``, gradable or not."""
    gate = {
        "modality": modality,
        "gradable": gradable,
        "reasons": [] if gradable else DARK_REASONS,
        "probabilities": {"oct": 0.97, "fundus": 0.02, "other": 0.01}
        if modality == "oct"
        else {"oct": 0.01, "fundus": 0.96, "other": 0.03},
        "quality": {"brightness": 0.4 if gradable else 0.03},
    }
    body: dict[str, Any] = {
        "model": model["id"],
        "model_version": model["version"],
        "task": model["task"],
        "gradable": gradable,
        "label": None,
        "confidence": None,
        "probabilities": None,
        "inference_ms": 3.5,
        "derived": None,
        "referral": None,
        "gate": gate if state.gate_enabled else None,
    }
    if not gradable:
        body["referral"] = referral("ungradable", UNGRADABLE_ADVICE, "; ".join(DARK_REASONS))
        return body
    if model["task"] == "oct":
        probs = dict(state.oct_probs)
        ref = oct_referral(probs)
    else:
        probs = dict(zip(DR, [0.1, 0.2, 0.4, 0.2, 0.1], strict=True))
        body["derived"] = {"referable": 0.7, "any": 0.9}
        advice = ADVICE["refer"]
        ref = referral("refer", advice, "P(grade >= 2) = 0.70 >= 0.23", 0.7, 0.23)
    if not model.get("informative", True):
        why = "the model's validated balanced accuracy interval includes chance"
        ref = referral("not_informative", NOT_INFORMATIVE_ADVICE, why)
    label = max(probs, key=probs.__getitem__)
    body |= {"label": label, "confidence": probs[label], "probabilities": probs}
    body["referral"] = ref if state.referral_enabled else None
    return body


def volume_answer(scan: dict[str, Any]) -> dict[str, Any]:
    """A ``/predict/volume`` body: the volume answers as ``scan`` (a /predict body) does; three B-scans, the
    middle one ungradable, the first deciding."""
    frame = {"label": scan["label"], "probabilities": scan["probabilities"], "reasons": []}
    skipped = {"status": "ungradable", "label": None, "probabilities": None, "reasons": DARK_REASONS[:1]}
    graded = {"status": "graded"} | frame if scan["gradable"] else skipped
    frames = [{"index": 0} | graded, {"index": 1} | skipped, {"index": 2} | graded]
    return scan | {
        "rule": "max_urgency",
        "rule_text": "The volume is scored by its most urgent graded B-scan.",
        "n_frames": 3,
        "n_graded": 2 if scan["gradable"] else 0,
        "n_ungradable": 1 if scan["gradable"] else 3,
        "n_not_oct": 0,
        "needed_graded": 1,
        "deciding_frames": [0] if scan["gradable"] else [],
        "frames": frames,
    }


def exam_answer(state: FakeBackend, model: dict[str, Any], names: list[str], laterality: list[str]) -> dict[str, Any]:
    """A ``/predict/exam`` body: each file answered as /predict would, each eye decided by its first gradable
    image, the patient by the first eye; refused files (``notretina``) carry the gate's error."""
    images, eyes = [], []
    for i, (name, side) in enumerate(zip(names, laterality, strict=True)):
        eye = side or ("left" if "_os" in name.lower() else "right")
        refused = "notretina" in name.lower()
        result = None if refused else _prediction(state, model, model["task"], gradable="dark" not in name.lower())
        error = {"error": "not_retinal_image", "detail": f"{name} is not a retinal image"} if refused else None
        gradable = bool(result and result["gradable"])
        images.append(
            {"index": i, "filename": name, "eye": eye, "laterality_source": "form" if side else "filename"}
            | {"kind": "image", "gradable": gradable, "result": result, "volume": None, "error": error}
        )
    for side in ("right", "left"):
        mine = [img for img in images if img["eye"] == side]
        if not mine:
            continue
        deciding = next((img for img in mine if img["gradable"]), None)
        result = deciding["result"] if deciding else None
        eye_ref = result["referral"] if result else referral("ungradable", UNGRADABLE_ADVICE, "no gradable image")
        eyes.append(
            {"eye": side, "images": [img["index"] for img in mine], "n_images": len(mine)}
            | {"n_gradable": sum(img["gradable"] for img in mine), "gradable": deciding is not None}
            | {"deciding_image": deciding["index"] if deciding else None, "model": model["id"]}
            | {"label": result and result["label"], "confidence": result and result["confidence"]}
            | {"probabilities": result and result["probabilities"], "referral": eye_ref}
        )
    patient = dict(eyes[0]["referral"]) | {"deciding_eye": eyes[0]["eye"]}
    rule_text = "Each eye is decided by its most urgent gradable image, the patient by the most urgent eye."
    return {"rule": "most_urgent", "rule_text": rule_text, "patient": patient, "eyes": eyes, "images": images}


def _words(state: FakeBackend, body: Any) -> Any:
    """``body`` as sent: with the contract's words, or (``contract_words`` off) without them, as an older backend."""
    if state.contract_words:
        return body
    if isinstance(body, dict):
        return {k: _words(state, v) for k, v in body.items() if k not in CONTRACT_WORDS}
    if isinstance(body, list):
        return [_words(state, v) for v in body]
    return body


class FakeServer:
    """Context manager running a :class:`FakeBackend` on ``127.0.0.1:port`` (0: a free one) in a thread."""

    def __init__(self, state: FakeBackend | None = None, port: int = 0) -> None:
        self.state = state or FakeBackend()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self.state))
        self._server.daemon_threads = True
        self.state.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval keeps shutdown() (one poll) from adding half a second per test.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeBackend:
        self._thread.start()
        return self.state

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
