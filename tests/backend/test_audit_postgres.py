"""The audit log when several processes share one database, and when that database comes up late.

* Workers and replicas start together and all create the table at once: PostgreSQL fails all but
  one ``CREATE TABLE`` (duplicate ``pg_type`` row); every log must still come up ready.
* A database that is unavailable when the service starts: ``/ready`` retries it, so the pod gets
  ready once the database is there (a not-ready pod gets no prediction that could retry it).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.app.services.audit import AuditLog, make_engine
from tests.backend.helpers import SMALL_ID

PROCESSES = 3


def _start_at_once(url: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:
    """In a child process: wait for the others, start an AuditLog on ``url``, report (ready, error)."""
    log = AuditLog(url)
    barrier.wait(60)
    log.start()
    out.put((log.ready, log.error))
    log.stop()


@pytest.mark.slow
def test_processes_creating_the_table_at_once_all_get_ready(postgres_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")  # as uvicorn starts its workers
    barrier, out = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_start_at_once, args=(postgres_url, barrier, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert results == [(True, None)] * PROCESSES
    log = AuditLog(postgres_url)
    log.start()
    try:
        assert log.ready and log.query() == []  # one table, empty
    finally:
        log.stop()


def test_check_ready_reconnects_a_log_that_failed_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("a file where the database folder should be")
    log = AuditLog(f"sqlite:///{blocker}/audit.sqlite")
    log.start()
    try:
        assert not log.ready and log.error
        assert log.check_ready() is False  # still blocked: stays not ready, says why
        assert log.error
        blocker.unlink()
        assert log.check_ready() is True
        assert log.error is None
    finally:
        log.stop()


def test_ready_turns_200_once_the_audit_database_is_there(
    make_client: Callable[..., AbstractContextManager[TestClient]],
    api_models_dir: Path,
    oct_image: Path,
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "db"
    blocker.write_text("not yet a folder")
    with make_client(api_models_dir, audit_db=f"sqlite:///{blocker}/audit.sqlite") as c:
        first = c.get("/ready")
        assert first.status_code == 503 and first.json()["error"] == "not_ready"
        assert "audit log" in first.json()["detail"]
        blocker.unlink()  # the database becomes reachable while the service runs
        assert c.get("/ready").status_code == 200
        r = c.post(f"/predict?model={SMALL_ID}", files={"file": ("scan.jpeg", oct_image.read_bytes(), "image/jpeg")})
        assert r.status_code == 200
        rows = c.app.state.audit.query()
    assert [row["request_id"] for row in rows] == [r.headers["x-request-id"]]


def test_a_plain_postgresql_url_uses_psycopg() -> None:
    """``postgresql://`` means psycopg2 to SQLAlchemy, which is not installed; the project's driver is psycopg."""
    engine = make_engine("postgresql://u:pw@127.0.0.1:1/x", "FULL", 1000)
    try:
        assert engine.dialect.driver == "psycopg"
        assert engine.url.password == "pw"
    finally:
        engine.dispose()
