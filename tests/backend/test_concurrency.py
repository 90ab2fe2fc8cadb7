"""Concurrent requests: every answer right, and the micro-batcher really shares forward passes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient

from retina.registry import default_for
from tests.backend.helpers import assert_probabilities_close, metric_value, offline_probabilities


def test_concurrent_predictions_are_correct_and_batched(
    client: TestClient, api_models_dir: Path, oct_images: list[Path]
) -> None:
    spec = default_for("oct")
    images = [p.read_bytes() for p in oct_images[:8]]
    want = [offline_probabilities(api_models_dir / spec.checkpoint, d) for d in images]
    labels = {"model": spec.key}
    before = client.get("/metrics").text
    jobs = [i % len(images) for i in range(32)]

    def call(i: int) -> tuple[int, int, dict]:
        r = client.post("/predict?model=oct", files={"file": (f"{i}.jpeg", images[i], "image/jpeg")})
        return i, r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))

    for i, status, body in results:
        assert status == 200
        assert_probabilities_close(body["probabilities"], want[i])
    after = client.get("/metrics").text
    batches = metric_value(after, "retina_batch_size_count", **labels) - metric_value(
        before, "retina_batch_size_count", **labels
    )
    singles = metric_value(after, "retina_batch_size_bucket", le="1.0", **labels) - metric_value(
        before, "retina_batch_size_bucket", le="1.0", **labels
    )
    requests = metric_value(after, "retina_batch_size_sum", **labels) - metric_value(
        before, "retina_batch_size_sum", **labels
    )
    assert requests == len(jobs)
    assert batches < len(jobs)  # fewer forward passes than requests
    assert singles < batches  # at least one forward pass carried more than one request
