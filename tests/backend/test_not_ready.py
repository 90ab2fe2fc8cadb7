"""A corrupt or mismatched checkpoint: the service starts, says why it is not ready, never guesses."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.app.main import create_app
from retina.registry import default_for
from tests.backend.helpers import SMALL_ID, base_settings
from tests.support import save_random_checkpoint


@pytest.fixture(scope="module")
def broken(api_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    d = tmp_path_factory.mktemp("broken_models")
    for f in api_models_dir.glob("*.pt"):
        shutil.copy(f, d / f.name)
    # fundus: corrupt bytes; oct: a valid checkpoint whose classes differ from the registry's.
    (d / default_for("fundus").checkpoint).write_bytes(b"this is not a checkpoint" * 100)
    oct_spec = default_for("oct")
    wrong = dataclasses.replace(oct_spec, class_names=("A", "B", "C", "D"))
    save_random_checkpoint(wrong, d / oct_spec.checkpoint)
    with TestClient(create_app(base_settings(d, operator_key=OPERATOR))) as c:
        yield c


OPERATOR = "operator-key-for-details"
AS_OPERATOR = {"X-API-Key": OPERATOR}


def test_public_ready_and_health_name_the_failed_models_but_no_paths(broken: TestClient) -> None:
    for route in ("/ready", "/health"):
        text = broken.get(route).text
        assert default_for("fundus").key in text
        assert "/tmp" not in text and "broken_models" not in text and "corrupt" not in text


def test_ready_is_503_naming_corrupt_model(broken: TestClient) -> None:
    r = broken.get("/ready", headers=AS_OPERATOR)
    assert r.status_code == 503
    body = r.json()
    assert body["error"] == "not_ready"
    key = default_for("fundus").key
    assert key in body["detail"] and "corrupt" in body["detail"]


def test_ready_is_503_naming_mismatched_model(broken: TestClient) -> None:
    body = broken.get("/ready", headers=AS_OPERATOR).json()
    key = default_for("oct").key
    assert key in body["detail"] and "class_names" in body["detail"]
    failed = {m["id"]: m for m in body["models"] if not m["loaded"]}
    assert set(failed) == {key, default_for("fundus").key}


def test_health_stays_200(broken: TestClient) -> None:
    r = broken.get("/health")
    assert r.status_code == 200
    assert r.json()["ready"] is False


def test_predict_on_corrupt_model_is_503(broken: TestClient, fundus_image: Path) -> None:
    r = broken.post("/predict?model=fundus", files={"file": fundus_image.read_bytes()})
    assert r.status_code == 503
    assert r.json()["error"] == "not_ready"
    assert default_for("fundus").key in r.json()["detail"]


def test_predict_on_mismatched_model_is_503(broken: TestClient, oct_image: Path) -> None:
    key = default_for("oct").key
    for name in ("oct", key):
        r = broken.post(f"/predict?model={name}", files={"file": oct_image.read_bytes()})
        assert r.status_code == 503
        assert r.json()["error"] == "not_ready" and key in r.json()["detail"]


def test_gradcam_on_broken_model_is_503(broken: TestClient, fundus_image: Path) -> None:
    r = broken.post("/gradcam?model=fundus", files={"file": fundus_image.read_bytes()})
    assert r.status_code == 503
    assert r.json()["error"] == "not_ready"


def test_healthy_models_still_serve(broken: TestClient, oct_image: Path) -> None:
    r = broken.post(f"/predict?model={SMALL_ID}", files={"file": oct_image.read_bytes()})
    assert r.status_code == 200


def test_models_marks_failed_ones(broken: TestClient) -> None:
    rows = {m["id"]: m for m in broken.get("/models").json()}
    assert rows[SMALL_ID]["loaded"] is True
    failed = rows[default_for("fundus").key]
    assert failed["loaded"] is False and failed["version"] is None and failed["error"]
