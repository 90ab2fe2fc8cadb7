"""/predict, /gradcam and /report go through one pipeline: the same image is audited and counted alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter
from skimage import data as skimage_data

from tests.backend.helpers import encode, metric_value

ENDPOINTS = {"predict": "/predict", "gradcam": "/gradcam", "report": "/report"}
# What an audit row says about the image, apart from when, which request and which endpoint.
_VARYING = ("id", "ts", "request_id", "endpoint")


def _ungradable(path: Path) -> bytes:
    img = Image.open(path).convert("RGB")
    # A blur of its own radius: no other test sends these bytes, so the audit rows are this test's.
    return encode(img.filter(ImageFilter.GaussianBlur(radius=max(img.size) / 37)), "JPEG")


def _cat() -> bytes:
    return encode(Image.fromarray(skimage_data.chelsea()).rotate(7), "JPEG")


def _counts(client: TestClient, model: str, outcome: str) -> dict[str, tuple[float, float]]:
    text = client.get("/metrics").text
    return {
        e: (
            metric_value(text, "retina_model_requests_total", model=model, endpoint=e, outcome=outcome),
            metric_value(text, "retina_model_request_seconds_count", model=model, endpoint=e),
        )
        for e in ENDPOINTS
    }


def _rows(client: TestClient, data: bytes) -> dict[str, dict[str, Any]]:
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    rows = [r for r in client.app.state.pipeline.audit.query(limit=1000) if r["input_sha256"] == sha]
    by_endpoint = {r["endpoint"]: {k: v for k, v in r.items() if k not in _VARYING} for r in rows}
    assert len(rows) == len(by_endpoint) == len(ENDPOINTS), rows
    return by_endpoint


@pytest.mark.parametrize(
    ("model", "make", "outcome", "statuses"),
    [
        ("fundus", "ungradable", "ungradable", {"predict": 200, "gradcam": 422, "report": 200}),
        ("fundus", "cat", "not_retinal_image", {"predict": 422, "gradcam": 422, "report": 422}),
    ],
)
def test_same_image_is_counted_and_audited_alike_on_every_endpoint(
    client: TestClient, fundus_image: Path, model: str, make: str, outcome: str, statuses: dict[str, int]
) -> None:
    data = _ungradable(fundus_image) if make == "ungradable" else _cat()
    model_id = client.get("/models").json()
    model_id = next(m["id"] for m in model_id if m["task"] == model and m["default"])
    before = _counts(client, model_id, outcome)
    for endpoint, route in ENDPOINTS.items():
        r = client.post(f"{route}?model={model}", files={"file": ("x.jpeg", data, "image/jpeg")})
        assert r.status_code == statuses[endpoint], (endpoint, r.text[:200])
    after = _counts(client, model_id, outcome)
    for endpoint in ENDPOINTS:
        requests, seconds = (a - b for a, b in zip(after[endpoint], before[endpoint], strict=True))
        assert (requests, seconds) == (1, 1), (endpoint, requests, seconds)
    rows = _rows(client, data)
    assert rows["predict"]["outcome"] == outcome
    assert rows["gradcam"] == rows["predict"] and rows["report"] == rows["predict"]
