"""A stuck forward pass or a hung audit database is a 503 after its timeout, never a request that hangs."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from backend.app.services.audit import AuditLog, AuditRecord
from backend.app.services.batcher import wait_forward
from backend.app.services.errors import ServiceError


def test_a_forward_pass_that_never_ends_is_503_inference_timeout() -> None:
    never: Future[object] = Future()
    with pytest.raises(ServiceError) as caught:
        asyncio.run(wait_forward(never, 0.05))  # type: ignore[arg-type]
    assert (caught.value.status_code, caught.value.code) == (503, "inference_timeout")
    assert caught.value.headers and int(caught.value.headers["Retry-After"]) > 0


def test_a_hung_audit_commit_is_503_audit_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 s, not less: the same timeout bounds the SQL statement (PostgreSQL's statement_timeout, SQLite's busy
    # wait), and on a loaded CI machine a 0.1 s bound failed the late commit itself.
    log = AuditLog("sqlite://", timeout_s=1.0)
    release = threading.Event()
    commit = log._commit

    def hung(pending: list) -> None:  # the database does not answer until released
        release.wait(10)
        commit(pending)

    monkeypatch.setattr(log, "_commit", hung)
    log.start()
    try:
        rec = AuditRecord(
            request_id="r", endpoint="predict", model_id="m", model_version="1", task="oct", input_sha256="0" * 64
        )
        with pytest.raises(ServiceError) as caught:
            asyncio.run(log.record(rec))
        assert (caught.value.status_code, caught.value.code) == (503, "audit_unavailable")
        release.set()
        # The database comes back: the timed-out row is still committed (an extra row is harmless).
        for _ in range(600):  # a deadline for a loaded machine, not a timing claim: it returns at the commit
            if log.query():
                break
            threading.Event().wait(0.05)
        assert [r["request_id"] for r in log.query()] == ["r"]
    finally:
        release.set()
        log.stop()
