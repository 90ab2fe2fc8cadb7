"""The real thing: ``python -m uvicorn backend.main:app`` in a subprocess, called over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from retina.labels import OCT_CLASSES
from retina.paths import REPO_ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_uvicorn_serves_predict_over_http(tiny_models_dir: Path, oct_image: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "RETINA_MODELS_DIR": str(tiny_models_dir),
        "RETINA_DEVICE": "cpu",
        "RETINA_AUDIT_DB": f"sqlite:///{tiny_models_dir}/audit.sqlite",
    }
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.3)
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
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
