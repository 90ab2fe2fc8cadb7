"""Keys and roles (backend/app/core/auth.py): 401 before the body, client vs operator keys, the key's name audited."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.app.core.auth import AuthMiddleware, check_configured
from backend.app.core.config import Settings
from backend.app.main import create_app
from backend.app.services.audit import AuditLog, audit_table
from backend.app.services.audit.upgrade import add_missing_columns
from retina.registry import default_for
from tests.backend.helpers import base_settings

CLIENT_A, CLIENT_B, OPERATOR = "key-of-clinic-a", "key-of-the-ui-b", "key-of-the-operator"


@pytest.fixture(scope="module")
def keyed(api_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    db = tmp_path_factory.mktemp("auth") / "audit.sqlite"
    settings = base_settings(
        api_models_dir,
        insecure_no_auth=False,
        api_keys=f"clinic-a:{CLIENT_A},ui:{CLIENT_B}",
        operator_key=OPERATOR,
        audit_db=f"sqlite:///{db}",
        models=[default_for("oct").key],
    )
    with TestClient(create_app(settings)) as c:
        yield c, db


def test_401_is_sent_before_any_byte_of_the_body_is_read() -> None:
    """A raw ASGI call: the middleware answers without ever calling receive()."""
    settings = Settings(api_keys=f"a:{CLIENT_A}")
    called: list[str] = []
    inner_called: list[bool] = []

    async def inner(scope: object, receive: object, send: object) -> None:
        inner_called.append(True)

    async def receive() -> dict[str, object]:
        called.append("receive")
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"model=oct",
        "headers": [(b"content-length", b"90000000"), (b"content-type", b"multipart/form-data; boundary=x")],
    }
    asyncio.run(AuthMiddleware(inner, settings)(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 401
    assert called == [] and inner_called == []


def test_client_key_predicts_and_its_name_is_audited(keyed: tuple[TestClient, Path], oct_image: Path) -> None:
    c, db = keyed
    r = c.post(
        "/predict?model=oct",
        files={"file": ("scan.jpeg", oct_image.read_bytes(), "image/jpeg")},
        headers={"X-API-Key": CLIENT_A, "X-Request-ID": "auth-test-row-1"},
    )
    assert r.status_code == 200
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT client FROM audit_log WHERE request_id = 'auth-test-row-1'").fetchall()
        stored = b"".join(open(p, "rb").read() for p in db.parent.glob("audit.sqlite*"))
    finally:
        con.close()
    assert rows == [("clinic-a",)]
    assert CLIENT_A.encode() not in stored  # the name, never the key


def test_client_key_cannot_read_the_audit_but_the_operator_key_can(keyed: tuple[TestClient, Path]) -> None:
    c, _ = keyed
    for key in (CLIENT_A, CLIENT_B):
        r = c.get("/audit", headers={"X-API-Key": key})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = c.get("/audit", headers={"X-API-Key": OPERATOR})
    assert r.status_code == 200
    assert {e["client"] for e in r.json()["entries"]} <= {"clinic-a", "ui", "operator"}


def test_missing_or_wrong_key_is_401(keyed: tuple[TestClient, Path], oct_image: Path) -> None:
    c, _ = keyed
    for headers in ({}, {"X-API-Key": "guess"}):
        r = c.post("/predict?model=oct", files={"file": ("a.jpeg", b"x", "image/jpeg")}, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert r.headers["X-Request-ID"]


def test_public_health_and_ready_show_no_paths_or_driver_text(keyed: tuple[TestClient, Path]) -> None:
    c, db = keyed
    for route in ("/health", "/ready"):
        text = c.get(route).text
        assert str(db.parent) not in text and "sqlite" not in text.lower()


def test_the_service_refuses_to_start_without_a_key() -> None:
    with pytest.raises(RuntimeError, match="no API key configured"):
        check_configured(Settings())
    check_configured(Settings(insecure_no_auth=True))
    check_configured(Settings(api_keys=f"a:{CLIENT_A}"))


@pytest.mark.parametrize("bad", ["nokey", "a b:long-enough-key", "a:short", f"a:{CLIENT_A},a:{CLIENT_B}"])
def test_malformed_key_lists_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        Settings(api_keys=bad)
    assert CLIENT_A not in str(caught.value) and "long-enough-key" not in str(caught.value)


def test_no_auth_opt_out_is_refused_on_a_published_address() -> None:
    with pytest.raises(ValueError, match="loopback-only"):
        Settings(insecure_no_auth=True, bind_address="0.0.0.0")


def test_an_old_audit_table_gets_the_client_column(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    columns = ", ".join(f'"{c.name}"' for c in audit_table.columns if c.name != "client")
    con.execute(f"CREATE TABLE audit_log ({columns})")
    con.close()
    log = AuditLog(f"sqlite:///{db}")
    log.start()
    try:
        assert log.ready
        assert add_missing_columns(log._connect(), audit_table) == []  # already added at start
    finally:
        log.stop()
    con = sqlite3.connect(db)
    assert "client" in {r[1] for r in con.execute("PRAGMA table_info(audit_log)")}
    con.close()
