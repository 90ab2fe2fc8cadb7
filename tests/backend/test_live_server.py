"""The real thing: ``python -m uvicorn backend.main:app`` in a subprocess, called over HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from retina.labels import OCT_CLASSES
from tests.support import uvicorn_server


@pytest.mark.slow
def test_uvicorn_serves_predict_over_http(tiny_models_dir: Path, oct_image: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RETINA_MODELS_DIR": str(tiny_models_dir),
        "RETINA_DEVICE": "cpu",
        "RETINA_AUDIT_DB": f"sqlite:///{tiny_models_dir}/audit.sqlite",
        "RETINA_INSECURE_NO_AUTH": "true",  # a loopback-only test server: the explicit opt-out
    }
    with uvicorn_server(env, tmp_path / "server.log") as (_proc, base):
        r = httpx.post(
            f"{base}/predict?model=oct",
            files={"file": (oct_image.name, oct_image.read_bytes(), "image/jpeg")},
            timeout=30,
        )
        assert r.status_code == 200
        assert r.json()["label"] in OCT_CLASSES
        assert r.headers["x-request-id"]
        bad = httpx.post(f"{base}/predict", files={"file": ("a.txt", b"text")}, timeout=30)
        assert bad.status_code == 415 and bad.json()["error"] == "unsupported_media_type"
