"""Several uvicorn workers behind one port, as a replica runs them: nothing lost, one metrics view.

* PostgreSQL audit: two workers write one ``audit_log`` table concurrently; every answered
  request id must be there exactly once. The server is Debian's ``postgresql``, started by the test
  in a temp dir (``postgres_url`` in conftest.py); the test skips, saying why, when it is not installed.
* ``/metrics``: with two workers, every scrape (whichever worker answers it) reports the totals of
  all requests, and the per-worker files show that both workers really served some of them.
* One worker: multiprocess mode stays off (per-process collectors present, no metrics folder).

The server is ``python -m uvicorn backend.main:app`` with the shipped models and ``samples/``
images (OCT and fundus through ``model=auto``), so nothing here needs ``../shared``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from retina.paths import REPO_ROOT
from tests.backend.helpers import metric_value
from tests.support import uvicorn_server

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

WORKERS = 2
REQUESTS = 48
CLIENTS = 8
SCRAPES = 12
IMAGES = sorted((REPO_ROOT / "samples" / "oct").glob("*.jpeg")) + sorted(
    (REPO_ROOT / "samples" / "fundus").glob("*.jpeg")
)


def _server_env(tmp_path: Path, audit_db: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETINA_", "PROMETHEUS_"))}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env | {
        "RETINA_DEVICE": "cpu",
        "RETINA_INSECURE_NO_AUTH": "true",  # a loopback-only test server: the explicit opt-out
        # 2 workers x 1 thread on this 2-core machine (the README's rule: workers x threads <= cores).
        "RETINA_TORCH_THREADS": "1",
        "RETINA_DECODE_THREADS": "1",
        "RETINA_AUDIT_DB": audit_db,
        "RETINA_DATA_DIR": str(tmp_path / "no-shared-data"),
        # The per-server metrics folder goes under the temp dir: the test's own, so it can look inside.
        "TMPDIR": str(tmp_path / "tmp"),
        # uvicorn kills a worker that misses its 5 s health ping; one still importing torch on a
        # loaded 2-core machine can miss it, and is then restarted over and over (seen here).
        "UVICORN_TIMEOUT_WORKER_HEALTHCHECK": "120",
    }


def _fire(base: str, prefix: str) -> tuple[list[str], list[str]]:
    """``REQUESTS`` concurrent ``/predict?model=auto``, each on a new connection (so both workers accept some).

    Returns (answered request ids, failures as text).
    """

    def one(i: int) -> tuple[str, int, str]:
        rid = f"{prefix}-{i}"
        image = IMAGES[i % len(IMAGES)]
        r = httpx.post(
            f"{base}/predict?model=auto",
            files={"file": (image.name, image.read_bytes(), "image/jpeg")},
            headers={"X-Request-ID": rid},
            timeout=120,
        )
        return rid, r.status_code, r.text[:200] if r.headers.get("x-request-id") == rid else "request id not echoed"

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    answered = [rid for rid, status, _ in results if status == 200]
    failures = [f"{rid}: {status} {text}" for rid, status, text in results if status != 200]
    return answered, failures


def test_two_workers_audit_every_answered_request_once_in_postgresql(postgres_url: str, tmp_path: Path) -> None:
    import psycopg

    assert len(IMAGES) >= 10
    with uvicorn_server(_server_env(tmp_path, postgres_url), tmp_path / "server.log", workers=WORKERS) as (_p, base):
        health = httpx.get(f"{base}/health", timeout=10).json()
        assert health["ready"] is True
        answered, failures = _fire(base, "pg")
    assert not failures, failures[:5]
    assert len(answered) == REQUESTS
    # Read the table directly (psycopg, not the service), after the server has stopped.
    with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://")) as con:
        rows = con.execute("SELECT request_id, endpoint, outcome FROM audit_log").fetchall()
    counts = Counter(rid for rid, _, _ in rows)
    duplicates = {rid: n for rid, n in counts.items() if n > 1}
    missing = set(answered) - set(counts)
    assert not duplicates, f"logged more than once: {duplicates}"
    assert not missing, f"{len(missing)} answered requests missing: {sorted(missing)[:5]}"
    assert set(counts) == set(answered)  # and nothing that was not answered
    assert {(e, o) for _, e, o in rows} == {("predict", "ok")}
    logger.info(
        "postgres audit, %d workers: sent %d, answered %d, rows %d, distinct ids %d, duplicates %d",
        WORKERS,
        REQUESTS,
        len(answered),
        len(rows),
        len(counts),
        len(duplicates),
    )


def _per_worker(metrics_dir: Path, name: str, **labels: str) -> dict[int, float]:
    """``name{labels}`` summed per worker pid, read from each worker's own counter file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out: dict[int, float] = {}
    for f in sorted(metrics_dir.glob("counter_*.db")):
        pid = int(f.stem.split("_")[1])
        out[pid] = sum(
            s.value
            for metric in MultiProcessCollector.merge([str(f)])
            for s in metric.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )
    return out


def test_two_workers_metrics_add_up_whichever_worker_answers(tmp_path: Path) -> None:
    env = _server_env(tmp_path, f"sqlite:///{tmp_path}/audit.sqlite")
    with uvicorn_server(env, tmp_path / "server.log", workers=WORKERS) as (_p, base):
        answered, failures = _fire(base, "m")
        # New connection per scrape: the kernel hands them to either worker.
        scrapes = [httpx.get(f"{base}/metrics", timeout=30).text for _ in range(SCRAPES)]
        folders = list((tmp_path / "tmp").glob("retina-metrics-*"))
        assert len(folders) == 1, folders
        per_worker = _per_worker(folders[0], "retina_model_requests_total", endpoint="predict", outcome="ok")
    assert not failures, failures[:5]
    http = [metric_value(t, "http_requests_total", handler="/predict", method="POST", status="200") for t in scrapes]
    model = [metric_value(t, "retina_model_requests_total", endpoint="predict", outcome="ok") for t in scrapes]
    assert http == [REQUESTS] * SCRAPES
    assert model == [REQUESTS] * SCRAPES
    # Both workers answered part of the load (else the sums above would prove nothing).
    assert len(per_worker) == WORKERS and all(n > 0 for n in per_worker.values()), per_worker
    assert sum(per_worker.values()) == REQUESTS
    # Every worker has both models loaded: livemin over the live workers.
    assert metric_value(scrapes[-1], "retina_model_loaded") == 2
    logger.info(
        "metrics, %d workers: %d requests, per worker %s, each of %d scrapes reported %g",
        WORKERS,
        REQUESTS,
        sorted(per_worker.values()),
        SCRAPES,
        model[0],
    )


def test_one_worker_keeps_per_process_metrics(tmp_path: Path) -> None:
    env = _server_env(tmp_path, f"sqlite:///{tmp_path}/audit.sqlite")
    with uvicorn_server(env, tmp_path / "server.log") as (_p, base):
        text = httpx.get(f"{base}/metrics", timeout=30).text
    assert "process_resident_memory_bytes" in text  # the process collector: only outside multiprocess mode
    assert metric_value(text, "retina_model_loaded") == 2
    assert not list((tmp_path / "tmp").glob("retina-metrics-*"))
