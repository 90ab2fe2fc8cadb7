"""Prometheus metrics of the model side (the HTTP side is prometheus-fastapi-instrumentator's).

Each app owns its :class:`~prometheus_client.CollectorRegistry`, so several apps in one
process (tests) never collide on metric names. With several uvicorn workers, prometheus_client's
multiprocess mode is on (``backend/app/core/multiprocess.py``) and ``/metrics`` sums every worker;
the process/GC collectors registered here are then left out (they describe one process only).
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class ServiceMetrics:
    """Counters and histograms labelled by model, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            try:
                self.registry.register(collector)
            except ValueError:  # pragma: no cover - already there
                pass
        r = self.registry
        self.batch_size = Histogram(
            "retina_batch_size",
            "Requests per forward pass of the micro-batcher",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "retina_inference_seconds",
            "Forward pass time of one micro-batch (preprocessing tail + model + softmax)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "retina_queue_wait_seconds",
            "Time a prepared image waits for its micro-batch to start",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cam_seconds = Histogram(
            "retina_cam_seconds", "CAM computation time", ["model", "method"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.decode_seconds = Histogram(
            "retina_decode_seconds",
            "Upload read + decode + preprocessing time",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_requests = Counter(
            "retina_model_requests",
            "Image requests per model, endpoint and outcome (ok or the error code)",
            ["model", "endpoint", "outcome"],
            registry=r,
        )
        self.model_request_seconds = Histogram(
            "retina_model_request_seconds",
            "Server-side time per image request (after the upload arrived), by model and endpoint",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter("retina_predictions", "Predicted labels per model", ["model", "label"], registry=r)
        self.model_loaded = Gauge(
            "retina_model_loaded",
            "1 when the model is loaded and served, 0 when it failed",
            ["model"],
            registry=r,
            # Several workers: 1 only while every live worker serves it (ignored in one process).
            multiprocess_mode="livemin",
        )
