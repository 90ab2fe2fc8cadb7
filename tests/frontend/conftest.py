"""Fixtures for the UI tests: a real backend (uvicorn subprocess, tiny random checkpoints) on a free port."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import free_port, serve


def backend_env(models_dir: Path) -> dict[str, str]:
    """Environment of a test backend: tiny models, one thread each (2 shared cores), no API key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_") or k == "RETINA_DATA_DIR"}
    env |= {
        "RETINA_MODELS_DIR": str(models_dir),
        "RETINA_DEVICE": "cpu",
        "RETINA_TORCH_THREADS": "1",
        "RETINA_DECODE_THREADS": "1",
        "RETINA_LOG_LEVEL": "WARNING",
        "RETINA_INSECURE_NO_AUTH": "true",  # a loopback-only test server: the explicit opt-out
        "PYTHONUNBUFFERED": "1",
    }
    return env


@pytest.fixture(scope="session")
def backend_url(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the real backend (``uvicorn backend.main:app``) serving every registered model.

    Random-weight test checkpoints by default; ``RETINA_E2E_MODELS_DIR=models`` serves the shipped
    ones instead (used to take the README screenshot with the real models).
    """
    models_dir = Path(os.environ.get("RETINA_E2E_MODELS_DIR") or tiny_models_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path_factory.mktemp("backend") / "uvicorn.log"
    with serve(cmd, backend_env(models_dir), f"{url}/ready", log):
        yield url


@pytest.fixture(scope="session")
def backend_models(backend_url: str) -> list[dict]:
    """``GET /models`` of the test backend, read directly (not through the frontend client)."""
    resp = requests.get(f"{backend_url}/models", timeout=10)
    resp.raise_for_status()
    return resp.json()
