"""A scriptable stand-in for the backend over real HTTP, for client unit tests.

It speaks the backend's contract (``/ready``, ``/models``, ``/predict``, ``/gradcam``) on a free
loopback port, records every request (path, query, headers, multipart fields) and can be told to
fail (``queue_error``), stall (``delay_s``) or be not ready. Tests of the *real* backend use
``backend_server`` in ``conftest.py`` instead.
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

from PIL import Image

OCT = ["CNV", "DME", "DRUSEN", "NORMAL"]


def png_bytes(size: int = 8, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


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
            }
        ]
    )
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
            if isinstance(body, str):
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
                    self._send(200, {"status": "ready"})
                else:
                    self._send(503, {"error": "not_ready", "detail": state.not_ready_detail})
            elif path == "/models":
                self._send(200, state.models)
            elif path == "/predict" and method == "POST":
                probs = dict(zip(OCT, [0.1, 0.2, 0.6, 0.1], strict=True))
                self._send(
                    200,
                    {
                        "model": query.get("model", "oct"),
                        "model_version": "1.2.3",
                        "task": "oct",
                        "label": "DRUSEN",
                        "confidence": 0.6,
                        "probabilities": probs,
                        "inference_ms": 3.5,
                        "derived": None,
                    },
                )
            elif path == "/gradcam" and method == "POST":
                self._send(
                    200,
                    {
                        "label": "DRUSEN",
                        "confidence": 0.6,
                        "probabilities": {},
                        "target": query.get("target", "DRUSEN"),
                        "method": query.get("method", "gradcam"),
                        "overlay_png": base64.b64encode(png_bytes()).decode(),
                        "heatmap_png": base64.b64encode(png_bytes(colour=(0, 0, 255))).decode(),
                    },
                )
            else:
                self._send(404, {"error": "not_found", "detail": f"no route {path}"})

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

    return Handler


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
