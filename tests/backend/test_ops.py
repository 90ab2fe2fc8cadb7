"""/health, /ready, /models, /metrics, /docs, and the error shape of FastAPI's own 404/405."""

from __future__ import annotations

from fastapi.testclient import TestClient

from retina.registry import MODELS, default_for
from tests.backend.helpers import SMALL_ID, SMALL_TEMPERATURE


def test_health_is_ok_and_lists_models(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["ready"] is True
    assert {m["id"] for m in body["models"]} == {*MODELS, SMALL_ID}
    assert all(m["loaded"] and m["version"] for m in body["models"])


def test_ready_when_every_model_loaded(client: TestClient) -> None:
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"


def test_models_lists_both_tasks_with_defaults(client: TestClient) -> None:
    r = client.get("/models")
    assert r.status_code == 200
    rows = {m["id"]: m for m in r.json()}
    for task in ("oct", "fundus"):
        spec = default_for(task)
        row = rows[spec.key]
        assert row["task"] == task and row["default"] is True and row["loaded"] is True
        assert row["arch"] == spec.arch
        assert row["classes"] == list(spec.class_names)
        assert row["input_size"] == spec.preprocess.size
        assert row["channels"] == spec.preprocess.channels
        assert row["version"] == "0.0.0-test"


def test_models_serves_extra_checkpoint_from_its_metadata(client: TestClient) -> None:
    row = next(m for m in client.get("/models").json() if m["id"] == SMALL_ID)
    assert row["arch"] == "simplecnn" and row["default"] is False
    assert row["input_size"] == 64 and row["channels"] == 1
    assert row["temperature"] == SMALL_TEMPERATURE


def test_models_metrics_are_json_safe(client: TestClient) -> None:
    row = next(m for m in client.get("/models").json() if m["id"] == SMALL_ID)
    # NaN and inf are not JSON: they come back as null, finite numbers untouched.
    assert row["metrics"] == {"accuracy": None, "macro_f1": 0.5, "per_class": {"CNV": None}}
    assert row["card"]["description"] == "tiny test model"


def test_metrics_exposes_http_and_model_metrics(client: TestClient, oct_image) -> None:
    assert client.post("/predict", files={"file": oct_image.read_bytes()}).status_code == 200
    r = client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert "http_requests_total" in text and "http_request_duration_seconds" in text
    assert 'handler="/predict"' in text
    key = default_for("oct").key
    assert f'retina_batch_size_count{{model="{key}"}}' in text
    assert f'retina_model_requests_total{{endpoint="predict",model="{key}",outcome="ok"}}' in text


def test_docs_and_openapi(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch", "/gradcam", "/models", "/health", "/ready", "/metrics"):
        assert path in spec["paths"], path
    predict_ok = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert predict_ok["$ref"].endswith("/PredictResponse")
    assert "image/png" in spec["paths"]["/gradcam"]["post"]["responses"]["200"]["content"]


def test_unknown_route_has_error_shape(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


def test_wrong_method_has_error_shape(client: TestClient) -> None:
    r = client.get("/predict")
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"


def test_every_response_has_a_request_id(client: TestClient) -> None:
    assert len(client.get("/health").headers["X-Request-ID"]) >= 16
    assert client.get("/nope").headers["X-Request-ID"]


def test_client_request_id_is_echoed(client: TestClient) -> None:
    r = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
