"""Audit log: one committed row per answered image, GET /audit for operators, failures are 503s."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from backend.app.api.routes.audit import parse_time
from backend.app.main import create_app
from backend.app.services.audit import COLUMNS, AuditLog, AuditRecord, audit_prediction, audit_table
from backend.app.services.errors import ServiceError
from retina.registry import default_for
from tests.backend.helpers import SMALL_ID, base_settings

KEY = "operator-secret"
AUTH = {"X-API-Key": KEY}
EXPECTED_COLUMNS = {
    "id",
    "ts",
    "request_id",
    "endpoint",
    "model_id",
    "model_version",
    "task",
    "input_sha256",
    "outcome",
    "label",
    "confidence",
    "probabilities",
    "referral",
    "modality",
    "site",  # the site profile's name (or "default") that decided the referral: not a patient identifier
    "client",  # the API key's name (never the key)
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rid() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def audit_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.sqlite"


@pytest.fixture(scope="module")
def keyed(api_models_dir: Path, audit_db: Path) -> Iterator[TestClient]:
    """The default OCT and fundus models, the operator key, and the audit log in a SQLite file."""
    settings = base_settings(
        api_models_dir,
        operator_key=KEY,
        api_keys="clinic-a:client-secret-1",
        audit_db=f"sqlite:///{audit_db}",
        models=[default_for("oct").key, default_for("fundus").key],
    )
    with TestClient(create_app(settings), headers=AUTH) as c:
        yield c


def _rows(db: Path, request_id: str) -> list[dict[str, Any]]:
    """The table as stored, read with plain sqlite3 (not through the service)."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM audit_log WHERE request_id = ? ORDER BY id", (request_id,))]
    finally:
        con.close()


def _upload(path: Path, name: str | None = None) -> tuple[str, bytes, str]:
    return (name or path.name, path.read_bytes(), "image/jpeg")


# ----------------------------------------------------------------------------- one row per answer


def test_predict_writes_one_row_with_request_model_hash_and_result(
    keyed: TestClient, audit_db: Path, oct_image: Path
) -> None:
    rid = _rid()
    r = keyed.post("/predict?model=oct", files={"file": _upload(oct_image)}, headers={"X-Request-ID": rid})
    assert r.status_code == 200
    body = r.json()
    rows = _rows(audit_db, rid)
    assert len(rows) == 1
    row = rows[0]
    assert row["endpoint"] == "predict" and row["outcome"] == "ok"
    assert (row["model_id"], row["model_version"], row["task"]) == (body["model"], body["model_version"], "oct")
    assert row["input_sha256"] == _sha(oct_image.read_bytes())
    assert row["label"] == body["label"]
    assert row["confidence"] == pytest.approx(body["confidence"])
    assert row["referral"] == (body.get("referral") or {}).get("level")
    assert row["client"] == "operator"  # the key's name, never the key


def test_fundus_predict_is_logged_with_its_own_model(keyed: TestClient, audit_db: Path, fundus_image: Path) -> None:
    rid = _rid()
    r = keyed.post("/predict?model=fundus", files={"file": _upload(fundus_image)}, headers={"X-Request-ID": rid})
    assert r.status_code == 200
    (row,) = _rows(audit_db, rid)
    assert row["model_id"] == default_for("fundus").key and row["task"] == "fundus"
    assert row["label"] == r.json()["label"]
    assert row["input_sha256"] == _sha(fundus_image.read_bytes())


def test_batch_logs_each_answered_item_and_not_the_refused_one(
    keyed: TestClient, audit_db: Path, oct_images: list[Path]
) -> None:
    rid = _rid()
    files = [("files", _upload(p)) for p in oct_images[:3]] + [("files", ("notes.txt", b"not an image", "text/plain"))]
    r = keyed.post("/predict/batch?model=oct", files=files, headers={"X-Request-ID": rid})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [("error" in x) for x in results] == [False, False, False, True]
    rows = _rows(audit_db, rid)
    assert len(rows) == 3
    assert {row["endpoint"] for row in rows} == {"predict_batch"}
    by_hash = {row["input_sha256"]: row for row in rows}
    for path, item in zip(oct_images[:3], results, strict=False):
        assert by_hash[_sha(path.read_bytes())]["label"] == item["label"]


def test_gradcam_is_logged(keyed: TestClient, audit_db: Path, oct_image: Path) -> None:
    rid = _rid()
    r = keyed.post("/gradcam?model=oct", files={"file": _upload(oct_image)}, headers={"X-Request-ID": rid})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    (row,) = _rows(audit_db, rid)
    assert row["endpoint"] == "gradcam"
    assert row["label"] == r.headers["X-Label"] and row["model_id"] == r.headers["X-Model"]
    assert row["input_sha256"] == _sha(oct_image.read_bytes())


def test_refused_upload_is_not_logged(keyed: TestClient, audit_db: Path) -> None:
    rid = _rid()
    r = keyed.post("/predict", files={"file": ("a.txt", b"hello", "text/plain")}, headers={"X-Request-ID": rid})
    assert r.status_code == 415
    assert _rows(audit_db, rid) == []


def test_no_pixels_filenames_or_identifiers_are_stored(keyed: TestClient, audit_db: Path, oct_image: Path) -> None:
    name = "patient-JaneDoe-19450101.jpeg"
    data = oct_image.read_bytes()
    r = keyed.post("/predict?model=oct", files={"file": (name, data, "image/jpeg")})
    assert r.status_code == 200
    con = sqlite3.connect(audit_db)
    try:
        columns = {c[1] for c in con.execute("PRAGMA table_info(audit_log)")}
        types = {
            t for row in con.execute(f"SELECT {', '.join(f'typeof({c})' for c in COLUMNS)} FROM audit_log") for t in row
        }
        longest = con.execute("SELECT max(length(probabilities)) FROM audit_log").fetchone()[0]
        con.execute("PRAGMA wal_checkpoint(FULL)")  # move the WAL into the main file before grepping it
    finally:
        con.close()
    assert columns == EXPECTED_COLUMNS
    assert "blob" not in types
    assert longest < 1000  # a few class probabilities, not an image
    raw = b"".join(p.read_bytes() for p in audit_db.parent.glob(audit_db.name + "*"))
    assert b"JaneDoe" not in raw
    assert data[200:264] not in raw  # no piece of the upload itself


# ----------------------------------------------------------------------------- GET /audit


def _post_many(c: TestClient, images: list[Path], model: str) -> list[str]:
    ids = []
    for path in images:
        rid = _rid()
        assert c.post(
            f"/predict?model={model}", files={"file": _upload(path)}, headers={"X-Request-ID": rid}
        ).is_success
        ids.append(rid)
    return ids


def test_get_audit_lists_entries_oldest_first(keyed: TestClient, oct_images: list[Path]) -> None:
    ids = _post_many(keyed, oct_images[:3], "oct")
    r = keyed.get("/audit", params={"limit": 1000})
    assert r.status_code == 200
    entries = r.json()["entries"]
    assert [e["request_id"] for e in entries][-3:] == ids
    stamps = [datetime.fromisoformat(e["ts"]) for e in entries]
    assert stamps == sorted(stamps) and all(t.utcoffset() == timedelta(0) for t in stamps)
    assert set(entries[-1]) == EXPECTED_COLUMNS


def test_get_audit_since_until_and_model_filters(keyed: TestClient, oct_images: list[Path], fundus_image: Path) -> None:
    ids = _post_many(keyed, oct_images[:2], "oct") + _post_many(keyed, [fundus_image], "fundus")
    everything = keyed.get("/audit", params={"limit": 1000}).json()["entries"]
    mine = [e for e in everything if e["request_id"] in ids]
    assert [e["request_id"] for e in mine] == ids
    second = mine[1]["ts"]
    after = keyed.get("/audit", params={"since": second, "limit": 1000}).json()["entries"]
    assert [e["request_id"] for e in after] == ids[1:]
    before = keyed.get("/audit", params={"until": second, "limit": 1000}).json()["entries"]
    assert ids[0] in {e["request_id"] for e in before} and not {ids[1], ids[2]} & {e["request_id"] for e in before}
    fundus_key = default_for("fundus").key
    only_fundus = keyed.get("/audit", params={"since": mine[0]["ts"], "model": fundus_key}).json()["entries"]
    assert [e["request_id"] for e in only_fundus] == ids[2:]
    assert keyed.get("/audit", params={"model": "no-such-model"}).json() == {"entries": [], "next_since": None}


def test_get_audit_pages_with_next_since(keyed: TestClient, oct_images: list[Path]) -> None:
    start = datetime.now(UTC).isoformat()
    ids = _post_many(keyed, oct_images[:5], "oct")
    seen: list[str] = []
    since: str | None = start
    pages = 0
    while since is not None:
        r = keyed.get("/audit", params={"since": since, "limit": 2})
        assert r.status_code == 200
        page = r.json()
        assert len(page["entries"]) <= 2
        seen += [e["request_id"] for e in page["entries"]]
        since = page["next_since"]
        pages += 1
        assert pages < 10
    assert seen == ids
    assert pages == 3


def test_get_audit_needs_the_right_key(keyed: TestClient) -> None:
    missing = keyed.get("/audit", headers={"X-API-Key": ""})
    wrong = keyed.get("/audit", headers={"X-API-Key": "guess"})
    for r in (missing, wrong):
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_get_audit_is_closed_when_no_key_is_configured(client: TestClient, oct_image: Path) -> None:
    assert client.post("/predict", files={"file": _upload(oct_image)}).status_code == 200  # still audited, in memory
    r = client.get("/audit")
    assert r.status_code == 403 and r.json()["error"] == "audit_requires_api_key"


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"until": "2025-13-01"},
        {"since": "0001-01-01T00:00+01:00"},  # out of range once converted to UTC
        {"until": "9999-12-31T23:59-01:00"},
        {"limit": 0},
        {"limit": 1001},
        {"limit": "many"},
    ],
)
def test_get_audit_bad_parameters_are_422(keyed: TestClient, params: dict[str, Any]) -> None:
    r = keyed.get("/audit", params=params)
    assert r.status_code == 422 and r.json()["error"] == "invalid_parameter"


def test_parse_time_accepts_iso_forms() -> None:
    want = datetime(2025, 1, 31, 8, 0, tzinfo=UTC)
    for text in ("2025-01-31T08:00:00Z", "2025-01-31T10:00:00+02:00", "2025-01-31T10:00:00 02:00", "2025-01-31T08:00"):
        assert parse_time("since", text) == want, text
    assert parse_time("since", "") is None


# ----------------------------------------------------------------------------- the log itself


def _rec(i: int, ts: datetime | None = None, model: str = "m") -> AuditRecord:
    return AuditRecord(
        request_id=f"r{i}",
        endpoint="predict",
        model_id=model,
        model_version="1",
        task="oct",
        input_sha256=_sha(str(i).encode()),
        label="CNV",
        confidence=0.9,
        probabilities={"CNV": 0.9, "NORMAL": 0.1},
        ts=ts,
    )


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "dir" / "a.sqlite"  # parents are created
    log = AuditLog(f"sqlite:///{db}")
    log.start()
    try:
        log.submit(_rec(0)).result(timeout=10)
        assert log._engine is not None
        with log._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        log.stop()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent: a property of the file
        assert con.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 1
    finally:
        con.close()


def test_default_url_is_runs_audit_sqlite_under_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = AuditLog(None)
    log.start()
    try:
        log.submit(_rec(0)).result(timeout=10)
    finally:
        log.stop()
    assert (tmp_path / "runs" / "audit.sqlite").is_file()


def test_concurrent_records_are_group_committed(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'a.sqlite'}")
    log.start()

    async def burst() -> None:
        await asyncio.gather(*(log.record(_rec(i)) for i in range(200)))

    try:
        asyncio.run(burst())
        assert len(log.query(limit=1000)) == 200
        assert log.commits < 200  # callers waiting together shared transactions
    finally:
        log.stop()


def test_records_queued_at_stop_are_committed_and_later_ones_refused(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'a.sqlite'}")
    log.start()
    futures = [log.submit(_rec(i)) for i in range(50)]
    log.stop()
    assert all(f.result(timeout=0) is None for f in futures)
    reopened = AuditLog(log.url)
    reopened.start()
    try:
        assert len(reopened.query(limit=1000)) == 50
    finally:
        reopened.stop()
    with pytest.raises(ServiceError) as e:
        asyncio.run(log.record(_rec(99)))
    assert e.value.status_code == 503 and e.value.code == "audit_unavailable"


def test_page_never_splits_rows_with_equal_timestamps() -> None:
    log = AuditLog("sqlite://")
    log.start()
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    stamps = [t0, t0 + timedelta(seconds=1), t0 + timedelta(seconds=1), t0 + timedelta(seconds=1), t0 + timedelta(2)]
    try:
        for i, ts in enumerate(stamps):
            log.submit(_rec(i, ts)).result(timeout=10)
        seen: list[str] = []
        since: datetime | None = None
        for _ in range(10):
            page, since = log.page(since=since, limit=2)
            seen += [r["request_id"] for r in page]
            if since is None:
                break
        assert seen == ["r0", "r1", "r2", "r3", "r4"]
        filtered = log.query(since=t0 + timedelta(seconds=1), until=t0 + timedelta(days=2), model="m")
        assert [r["request_id"] for r in filtered] == ["r1", "r2", "r3"]
    finally:
        log.stop()


def test_record_rejects_anything_but_a_digest() -> None:
    with pytest.raises(ValueError, match="sha256"):
        AuditRecord("r", "predict", "m", "1", "oct", "scan-of-john.jpeg")
    with pytest.raises(ValueError, match="endpoint"):
        AuditRecord("r", "upload", "m", "1", "oct", "0" * 64)


def test_schema_compiles_for_postgresql() -> None:
    ddl = str(CreateTable(audit_table).compile(dialect=postgresql.dialect()))
    assert "TIMESTAMP WITH TIME ZONE" in ddl and "JSON" in ddl and "SERIAL" in ddl


# ----------------------------------------------------------------------------- failures are 503, never unaudited


def test_unopenable_database_makes_predictions_503(
    make_client: Callable[..., AbstractContextManager[TestClient]],
    small_only_dir: Path,
    oct_image: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with make_client(small_only_dir, audit_db=f"sqlite:///{blocker}/audit.sqlite") as c:
        r = c.post(f"/predict?model={SMALL_ID}", files={"file": _upload(oct_image)})
        batch = c.post(f"/predict/batch?model={SMALL_ID}", files=[("files", _upload(oct_image))])
        cam = c.post(f"/gradcam?model={SMALL_ID}", files={"file": _upload(oct_image)})
    for resp in (r, batch, cam):
        assert resp.status_code == 503 and resp.json()["error"] == "audit_unavailable"
        assert "label" not in resp.text
    assert any("audit" in rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR")


def test_commit_failure_mid_run_is_503_and_logged(
    make_client: Callable[..., AbstractContextManager[TestClient]],
    small_only_dir: Path,
    oct_image: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = tmp_path / "a.sqlite"
    with make_client(small_only_dir, audit_db=f"sqlite:///{db}") as c:
        assert c.post(f"/predict?model={SMALL_ID}", files={"file": _upload(oct_image)}).status_code == 200
        con = sqlite3.connect(db)
        con.execute("DROP TABLE audit_log")  # the database breaks under the running service
        con.commit()
        con.close()
        r = c.post(f"/predict?model={SMALL_ID}", files={"file": _upload(oct_image)})
    assert r.status_code == 503 and r.json()["error"] == "audit_unavailable"
    assert any("audit commit" in rec.getMessage() for rec in caplog.records)


def test_audit_prediction_reads_referral_and_gate_from_dicts_or_models() -> None:
    served = SimpleNamespace(id="m", task="fundus", meta=SimpleNamespace(version="2.0"))
    body = {
        "label": "2",
        "confidence": 0.6,
        "probabilities": {"0": 0.4, "2": 0.6},
        "referral": {"level": "refer", "advice": "see an ophthalmologist"},
        "gate": SimpleNamespace(modality="fundus", gradable=True),
    }
    log = AuditLog("sqlite://")
    log.start()
    try:
        asyncio.run(audit_prediction(log, "report", served, body, "a" * 64, request_id="rq"))  # type: ignore[arg-type]
        asyncio.run(audit_prediction(log, "predict", served, None, "b" * 64, outcome="wrong_modality"))  # type: ignore[arg-type]
        ok, refused = log.query()
    finally:
        log.stop()
    assert (ok["request_id"], ok["endpoint"], ok["model_version"], ok["task"]) == ("rq", "report", "2.0", "fundus")
    assert (ok["label"], ok["referral"], ok["modality"], ok["outcome"]) == ("2", "refer", "fundus", "ok")
    assert ok["probabilities"] == {"0": 0.4, "2": 0.6}
    assert refused["outcome"] == "wrong_modality" and refused["label"] is None and refused["probabilities"] is None
    assert refused["request_id"] == "-"  # outside a request: the context default, never empty


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """RETINA_TEST_AUDIT_PG_URL when set (a scratch DB), else a new database on the test's own server."""
    return os.environ.get("RETINA_TEST_AUDIT_PG_URL") or request.getfixturevalue("postgres_url")


def test_postgresql_through_the_same_code(pg_url: str) -> None:
    """Through psycopg: e.g. RETINA_TEST_AUDIT_PG_URL=postgresql+psycopg://postgres@127.0.0.1:54329/audit."""
    log = AuditLog(pg_url)
    log.start()
    try:
        assert log.ready, log.error
        t0 = datetime.now(UTC)
        asyncio.run(_burst(log, 30, model=f"pg-{uuid.uuid4().hex[:8]}"))
        rows = log.query(since=t0, limit=1000)
        mine = [r for r in rows if r["model_id"].startswith("pg-")]
        assert len(mine) >= 30 and all(r["ts"].tzinfo is not None and r["ts"] >= t0 for r in mine)
        assert mine[-1]["probabilities"] == {"CNV": 0.9, "NORMAL": 0.1}
        model = mine[-1]["model_id"]
        seen, since = [], t0
        while since is not None:
            page, since = log.page(since=since, limit=7, model=model)
            seen += [r["request_id"] for r in page]
        assert sorted(seen) == sorted(f"r{i}" for i in range(30))
    finally:
        log.stop()


async def _burst(log: AuditLog, n: int, model: str) -> None:
    await asyncio.gather(*(log.record(_rec(i, model=model)) for i in range(n)))
