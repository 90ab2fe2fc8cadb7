"""Importing the service changes nothing in the process; the ASGI entry point applies the settings'
environment defaults; the upload limits come from the routes' own file parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from backend.app.core.config import Settings, process_defaults
from backend.app.main import ROUTERS, _body_limits, upload_routes
from retina.paths import REPO_ROOT

_PROBE = (
    "import json, os, sys; import {module}; "
    "print(json.dumps({{k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'TQDM_DISABLE')}}))"
)


def _env_after_import(module: str, **env: str) -> dict[str, str | None]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "TQDM_DISABLE")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        cwd=REPO_ROOT,
        env={**clean, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_backend_sets_no_environment_variable() -> None:
    assert _env_after_import("backend.app.main") == {"OMP_WAIT_POLICY": None, "TQDM_DISABLE": None}


def test_the_entry_point_applies_the_settings_defaults_and_the_operator_wins() -> None:
    assert _env_after_import("backend.main") == {"OMP_WAIT_POLICY": "PASSIVE", "TQDM_DISABLE": "1"}
    got = _env_after_import("backend.main", OMP_WAIT_POLICY="ACTIVE", RETINA_PROGRESS_BARS="true")
    assert got == {"OMP_WAIT_POLICY": "ACTIVE", "TQDM_DISABLE": None}


def test_process_defaults_follow_the_settings() -> None:
    assert process_defaults(Settings(omp_wait_policy="ACTIVE", progress_bars=True)) == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_upload_routes_are_read_from_the_file_parameters() -> None:
    uploads = upload_routes(m.router for m in ROUTERS)
    assert uploads == {
        "/predict": False,
        "/predict/batch": True,
        "/predict/volume": False,
        "/predict/exam": True,
        "/gradcam": False,
        "/report": False,
        "/report/exam": True,
    }
    s = Settings(max_upload_mb=1.0, max_batch_files=4)
    limit_for = _body_limits(s, uploads)
    one, _ = limit_for("/predict")
    four, words = limit_for("/predict/batch/")
    assert four == 4 * one and "4 files" in words
    assert limit_for("/gradcam") == limit_for("/report") == limit_for("/predict")
    assert limit_for("/models")[0] < one  # a route without a file gets the small no-file limit
    # A volume (and one B-scan of it, frame=) gets the volume limit, not the per-image one.
    volume, words = limit_for("/predict/volume")
    assert volume > one and "RETINA_MAX_VOLUME_UPLOAD_MB" in words
    assert limit_for("/gradcam", b"frame=2") == limit_for("/report", b"frame=0&alpha=0.5") == (volume, words)
