"""Batch scoring (``scoring.batch``, behind ``python -m scoring``) answers what ``POST /predict`` answers.

Both run the shipped models on ``samples/``; the service is sent one image at a time, so each is
scored in a forward pass of its own, as the batch scorer scores every image: the figures agree
exactly, not just to a tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.app.main import create_app
from retina.paths import DEFAULT_MODELS_DIR, REPO_ROOT
from scoring.batch import BatchScorer, ScoreConfig
from tests.backend.helpers import base_settings

SAMPLES = REPO_ROOT / "samples"
IMAGES = sorted(p for p in SAMPLES.rglob("*") if p.is_file() and p.name != "ATTRIBUTION.md")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped() -> Iterator[TestClient]:
    """The service over the shipped checkpoints (``models/``), as deployed."""
    with TestClient(create_app(base_settings(DEFAULT_MODELS_DIR))) as c:
        yield c


def _predict(client: TestClient, path: Path, model: str) -> Any:
    r = client.post(f"/predict?model={model}", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    return r.status_code, r.json()


def test_rows_equal_the_api_answers_for_every_sample(shipped: TestClient) -> None:
    rows = BatchScorer(ScoreConfig(model="auto")).score_paths([str(p) for p in IMAGES])
    for path, row in zip(IMAGES, rows, strict=True):
        status, body = _predict(shipped, path, "auto")
        if path.name.endswith("-volume.dcm"):
            # A multi-frame OCT volume is /predict/volume's: both refuse it as one image, with the same
            # code (the API's detail adds where to send it).
            assert status == 422 and body["error"] == row["error"] == "invalid_image", (body, row)
            continue
        assert status == 200, body
        assert row["error"] is None
        assert (row["model"], row["model_version"], row["task"]) == (body["model"], body["model_version"], body["task"])
        assert (row["gradable"], row["label"], row["confidence"]) == (
            body["gradable"],
            body["label"],
            body["confidence"],
        )
        assert json.loads(row["probabilities"]) == body["probabilities"], path.name
        derived = json.loads(row["derived"]) if row["derived"] else None
        assert derived == body["derived"]
        referral = body["referral"]
        assert (row["referral_level"], row["referral_threshold"]) == (referral["level"], referral["threshold"])
        assert (row["referral_probability"], row["referral_reason"]) == (referral["probability"], referral["reason"])
        gate = body["gate"]
        assert (row["gate_modality"], row["gate_gradable"]) == (gate["modality"], gate["gradable"])
        assert json.loads(row["gate_probabilities"]) == gate["probabilities"]


def test_refusals_and_bad_files_carry_the_api_error_code_and_detail(shipped: TestClient, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpeg"
    text.write_text("not an image")
    photo = SAMPLES / "fundus/IDRiD_001-grade3.jpeg"
    rows = BatchScorer(ScoreConfig(model="oct")).score_paths([str(photo), str(text)])
    for path, row in zip((photo, text), rows, strict=True):
        status, body = _predict(shipped, path, "oct")
        assert status in (415, 422)
        assert (row["error"], row["error_detail"]) == (body["error"], body["detail"])
    assert rows[0]["error"] == "wrong_modality" and rows[1]["error"] == "unsupported_media_type"
