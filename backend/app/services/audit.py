"""Audit log of every prediction, in any SQLAlchemy database (SQLite file by default).

One row per answered image: when, which request (``X-Request-ID``), which model and version,
the SHA-256 of the uploaded bytes, the outcome, label, probabilities, referral level and
modality. Never pixels, filenames, DICOM header fields or anything else that could identify
a patient: the hash lets an operator match a row to a file they hold, nothing more.

Durability: :meth:`AuditLog.record` returns only after the row is committed, and the routes
await it before they answer, so an answered request is always in the log, even if the
process is killed the next instant. A commit that fails raises 503 ``audit_unavailable``:
the client gets no unaudited prediction.

Throughput: one writer thread does *group commit*. Callers put their record on a queue and
wait on a future; the writer takes everything queued while its previous commit ran, inserts
it in one transaction and then resolves all those futures. Under load the number of commits
(and fsyncs) per second stays near ``1 / commit time`` however many requests arrive, and a
lone request pays one commit. SQLite runs in WAL mode (appends do not rewrite the main
file; readers never block the writer) with ``synchronous=FULL`` (the WAL is fsynced at every
commit, so a committed row also survives a power cut, not only a crash of the process).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import queue
import re
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from backend.app.services.audit_upgrade import add_missing_columns
from backend.app.services.errors import audit_unavailable
from backend.app.services.runtime import client_var, request_id_var

if TYPE_CHECKING:
    from backend.app.services.model_store import ServedModel

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path("runs") / "audit.sqlite"
# predict_exam: one row per image of an exam; exam: one row per exam (its patient referral), issue 29.
ENDPOINTS = ("predict", "predict_batch", "predict_volume", "gradcam", "report", "predict_exam", "exam")
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so the value is stored as
    naive UTC text (fixed width, so comparisons in ``WHERE ts >= ?`` sort correctly) and the
    UTC zone is put back when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("audit timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

audit_table = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", UTCDateTime(), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("model_id", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("task", String(16), nullable=False),
    Column("input_sha256", String(64), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("label", String(128), nullable=True),
    Column("confidence", Float, nullable=True),
    Column("probabilities", JSON, nullable=True),
    Column("referral", String(32), nullable=True),
    Column("modality", String(32), nullable=True),
    Column("site", String(64), nullable=True),
    Column("client", String(64), nullable=True),
    Index("ix_audit_log_ts", "ts"),
)

COLUMNS = tuple(c.name for c in audit_table.columns)


@dataclass
class AuditRecord:
    """One audited answer. ``ts`` is filled by :meth:`AuditLog.record` (UTC, timezone-aware).

    Attributes:
        input_sha256: hex SHA-256 of the uploaded bytes (64 lowercase hex digits).
        outcome: ``ok``, ``ungradable`` or a refusal code (``not_retinal_image``, ``wrong_modality``).
        probabilities: class name -> probability in [0, 1], or ``None`` when nothing was scored.
        referral: the referral level (e.g. ``urgent``), when the answer carried one.
        modality: what the image gate saw (``oct`` / ``fundus``), when it ran.
    """

    # The one declaration of an audit row's fields; ``schemas.AuditEntry`` (the /audit answer) is built
    # from it, descriptions included (``metadata["description"]``).
    request_id: str = field(metadata={"description": "The response's X-Request-ID."})
    endpoint: str = field(metadata={"description": "`predict`, `predict_batch`, `gradcam` or `report`."})
    model_id: str
    model_version: str
    task: str
    input_sha256: str = field(metadata={"description": "SHA-256 (hex) of the uploaded bytes."})
    outcome: str = field(default="ok", metadata={"description": "`ok`, `ungradable`, or the refusal code."})
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float | None] | None = None
    referral: str | None = field(
        default=None, metadata={"description": "Referral level of the answer, when it had one."}
    )
    modality: str | None = field(
        default=None, metadata={"description": "Modality seen by the image gate, when it ran."}
    )
    site: str | None = field(
        default=None,
        metadata={"description": "Which operating points decided the referral: a site profile's name or `default`."},
    )
    client: str | None = field(
        default=None, metadata={"description": "Name of the API key the answer was given to (never the key)."}
    )
    ts: datetime | None = field(default=None, metadata={"description": "When the answer was logged (UTC, ISO 8601)."})

    def __post_init__(self) -> None:
        # Cheap guards that keep anything but a digest out of the hash column (a filename,
        # say) and the endpoint names stable for whoever queries the table.
        if not _SHA256.match(self.input_sha256):
            raise ValueError("input_sha256 must be 64 lowercase hex digits")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {self.endpoint!r}")


class AuditUnavailable(RuntimeError):
    """The record could not be committed (database down, disk full, log stopped)."""


def resolve_url(url: str | None) -> str:
    """``RETINA_AUDIT_DB`` or the default SQLite file ``runs/audit.sqlite`` under the working directory."""
    if url:
        return url
    return f"sqlite:///{(Path.cwd() / DEFAULT_PATH).as_posix()}"


def _make_engine(url: str, synchronous: Synchronous, busy_timeout_ms: int, statement_timeout_ms: int = 5000) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the project installs psycopg (3).
        parsed = parsed.set(drivername="postgresql+psycopg")
        url = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() != "sqlite":
        # pre_ping: a server restarted under us costs one failed ping, not one failed commit.
        # connect_timeout: a readiness probe that retries an unreachable server must not hang on it for
        # ever (the default); 10 s, not less: a loaded host can take seconds to accept (seen in tests).
        args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql":
            # statement_timeout: a hung server (locks, full disk) fails a commit in seconds instead of
            # holding every prediction that awaits its audit row.
            args = {"connect_timeout": 10, "options": f"-c statement_timeout={int(statement_timeout_ms)}"}
        return create_engine(url, pool_pre_ping=True, connect_args=args)
    database = parsed.database or ""
    memory = database in ("", ":memory:") or "mode=memory" in url
    if memory:
        # One shared connection, or each thread would see its own empty database.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Per connection, outside any transaction (journal_mode cannot change inside one).
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    return engine


@dataclass
class _Pending:
    row: dict[str, Any]
    future: concurrent.futures.Future[None]


_STOP = object()
_MAX_SAME_TIME = 1_000_000  # rows with one timestamp that one page may return (see AuditLog.page)


class AuditLog:
    """Durable append-only log of predictions with group commit (see the module docstring).

    Args:
        url: SQLAlchemy URL; ``None`` = SQLite file ``runs/audit.sqlite`` in the working dir.
        synchronous: SQLite ``PRAGMA synchronous`` (``FULL``: a commit survives power loss;
            ``NORMAL`` in WAL mode survives a process crash but may lose the last commits on
            power loss). Ignored by other databases.
        busy_timeout_ms: how long SQLite waits for another writer (another worker process).
        max_batch: most records in one transaction.
        timeout_s: longest a caller waits for its row's commit before it answers 503 ``audit_unavailable``
            (also PostgreSQL's ``statement_timeout``), so a hung database cannot hang every request.

    Use ``start()`` once, ``await record(...)`` from the event loop (or ``submit(...)`` from any
    thread), ``query(...)`` from a worker thread, and ``stop()`` at shutdown (it commits what
    is queued first).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
        max_batch: int = 1000,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = resolve_url(url)
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.error: str | None = None
        self.commits = 0  # transactions committed: records / commits is the group-commit factor
        self._engine: Engine | None = None
        self._schema_ready = False
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # makes "is it open?" + "enqueue" atomic against stop()
        self._open = False
        self._thread: threading.Thread | None = None
        self._connect_lock = threading.Lock()

    @property
    def safe_url(self) -> str:
        """The URL with any password masked (for logs and /health)."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL may still hold a password: show none of it
            return "<invalid URL>"

    @property
    def ready(self) -> bool:
        return self._open and self._schema_ready and self.error is None

    def check_ready(self) -> bool:
        """:attr:`ready`, after one more try to connect if it is not (for the readiness probe).

        Without it a database that was down when the service started would be retried only by the
        next prediction, which a not-ready pod never gets: it would stay out of service for good.
        Blocking (the driver's connect): call it from a worker thread.
        """
        if self._open and not self.ready:
            # Check the table too, not only the connection: a failed commit may mean it is gone (and
            # create_all puts it back), so a successful ping alone would not make the log usable.
            self._schema_ready = False
            try:
                self._connect()
            except Exception:  # still down: self.error says why, /ready reports it
                logger.warning("audit log %s still unavailable: %s", self.safe_url, self.error)
            else:
                logger.info("audit log %s available again", self.safe_url)
        return self.ready

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the database, create the table if needed and start the writer thread.

        An unreachable database is logged, not raised: the service still starts (so /health
        can explain), every prediction answers 503 ``audit_unavailable``, and the writer
        retries the connection with each new record.
        """
        if self._open:
            return
        try:
            self._connect()
        except Exception:
            logger.error("audit log %s unavailable: %s; predictions answer 503", self.safe_url, self.error)
        self._open = True
        self._thread = threading.Thread(target=self._run, name="retina-audit", daemon=True)
        self._thread.start()
        if self.ready:
            logger.info("audit log: %s", self.safe_url)

    def stop(self) -> None:
        """Commit everything queued, stop the writer and close the connections."""
        with self._lock:
            if not self._open:
                return
            self._open = False
            self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()
        # Anything that slipped in behind the sentinel (it cannot, given the lock) fails loudly.
        self._fail_leftovers()
        if self._engine is not None:
            self._engine.dispose()

    # ------------------------------------------------------------------ writing

    def submit(self, rec: AuditRecord) -> concurrent.futures.Future[None]:
        """Queue ``rec`` (``ts`` set to now, UTC) and return a future resolved once it is committed."""
        if rec.ts is None:
            rec.ts = datetime.now(UTC)
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if not self._open:
                future.set_exception(AuditUnavailable("the audit log is not running"))
                return future
            self._queue.put(_Pending(asdict(rec), future))
        return future

    async def record(self, rec: AuditRecord) -> None:
        """Append ``rec``; returns once it is committed, raises 503 ``audit_unavailable`` otherwise."""
        try:
            # shield: a timed-out row is still committed when the database comes back (see _commit).
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self.submit(rec))), self.timeout_s)
        except TimeoutError:
            raise audit_unavailable(f"no commit within {self.timeout_s:g} s") from None
        except AuditUnavailable as e:
            raise audit_unavailable(str(e)) from e

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]  # block for the first, then take whatever else is queued
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            pending = [p for p in batch if p is not _STOP]
            if pending:
                self._commit(pending)
            if len(pending) < len(batch):
                return

    def _commit(self, pending: list[_Pending]) -> None:
        # A caller whose request was cancelled (client gone) still gets its row written:
        # logging an answer nobody read is harmless, losing one that was read is not.
        live = [p for p in pending if p.future.set_running_or_notify_cancel()]
        try:
            engine = self._connect()
            with engine.begin() as conn:
                conn.execute(insert(audit_table), [p.row for p in pending])
        except Exception as e:  # any driver error: the callers must hear about it, the thread must live
            self.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            logger.exception("audit commit of %d record(s) failed; answering 503 audit_unavailable", len(pending))
            for p in live:
                p.future.set_exception(AuditUnavailable(self.error))
            return
        if self.error is not None:
            logger.warning("audit log writable again after: %s", self.error)
        self.error = None
        self.commits += 1
        for p in live:
            p.future.set_result(None)

    def _connect(self) -> Engine:
        """The engine, with the table created; retried after a failure (e.g. a server not up yet)."""
        if self._engine is not None and self._schema_ready:
            return self._engine
        with self._connect_lock:  # the writer and a GET /audit thread may both get here
            try:
                if self._engine is None:
                    self._engine = _make_engine(
                        self.url, self.synchronous, self.busy_timeout_ms, int(self.timeout_s * 1000)
                    )
                try:
                    metadata.create_all(self._engine)
                except (IntegrityError, ProgrammingError):
                    # Several workers or replicas starting at once all see no table and all CREATE it;
                    # PostgreSQL lets one win and fails the others (duplicate pg_type row or relation).
                    # The second look finds the winner's table and creates nothing.
                    metadata.create_all(self._engine)
                add_missing_columns(self._engine, audit_table)
            except Exception as e:  # bad URL, missing driver, unreachable server, unwritable directory
                self.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                raise
            self._schema_ready = True
            self.error = None
            return self._engine

    def _fail_leftovers(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Pending) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(AuditUnavailable("the audit log was stopped"))

    # ------------------------------------------------------------------ reading

    def query(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        model: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows with ``since <= ts < until`` (either optional), oldest first (``ts``, then ``id``).

        Blocking: call it from a worker thread. Raises 503 ``audit_unavailable`` when the
        database cannot be read.
        """
        if not self._open:
            raise audit_unavailable("the audit log is not running")
        t = audit_table
        stmt = select(t).order_by(t.c.ts, t.c.id).limit(limit)
        if since is not None:
            stmt = stmt.where(t.c.ts >= since)
        if until is not None:
            stmt = stmt.where(t.c.ts < until)
        if model is not None:
            stmt = stmt.where(t.c.model_id == model)
        try:
            engine = self._connect()
            with engine.connect() as conn:
                return [dict(row) for row in conn.execute(stmt).mappings()]
        except Exception as e:
            logger.exception("audit query failed")
            raise audit_unavailable(f"{type(e).__name__}") from e

    def page(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        model: str | None = None,
    ) -> tuple[list[dict[str, Any]], datetime | None]:
        """One page of :meth:`query` and the ``since`` of the next page (``None``: this is the last).

        Exact paging on a timestamp cursor: one extra row is read; rows sharing the first
        unreturned row's timestamp are held back for the next page, so nothing is skipped or
        repeated even when several rows have the same microsecond. Only when more than
        ``limit`` rows share one microsecond is the page longer than ``limit`` (all of them).
        """
        rows = self.query(since, until, limit + 1, model)
        if len(rows) <= limit:
            return rows, None
        next_ts = rows[limit]["ts"]
        page = rows[:limit]
        while page and page[-1]["ts"] == next_ts:
            page.pop()
        if page:
            return page, next_ts
        step = next_ts + timedelta(microseconds=1)
        same = self.query(next_ts, step if until is None else min(until, step), _MAX_SAME_TIME, model)
        return same, step


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a dict, ``obj.name`` for a pydantic model or dataclass, ``None`` when absent."""
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _finite(value: Any) -> float | None:
    """A float for the JSON columns, None for missing or non-finite values (NaN is not valid JSON)."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


async def audit_prediction(
    audit: AuditLog,
    endpoint: str,
    served: ServedModel | None,
    body: Mapping[str, Any] | None,
    sha256: str,
    *,
    outcome: str = "ok",
    request_id: str | None = None,
) -> None:
    """Record one answered image; returns once committed (raises 503 ``audit_unavailable``).

    ``body`` is the prediction the client is about to receive (``prediction()``'s dict, or
    ``None`` for a refusal); ``referral`` (``{"level": ...}``) and ``gate`` (``{"modality": ...}``),
    dicts or models, are read when present. The request id defaults to the current request's
    ``X-Request-ID`` (set by the request-context middleware).
    """
    body = body or {}
    referral = body.get("referral")
    gate = body.get("gate")
    probabilities = body.get("probabilities")
    confidence = body.get("confidence")
    rec = AuditRecord(
        request_id=request_id or request_id_var.get(),
        endpoint=endpoint,
        # None: model=auto refused before any model was chosen.
        model_id=served.id if served is not None else "auto",
        model_version=served.meta.version if served is not None else "-",
        task=served.task if served is not None else "-",
        input_sha256=sha256,
        outcome=outcome,
        label=body.get("label"),
        confidence=_finite(confidence),
        probabilities=None if probabilities is None else {str(k): _finite(v) for k, v in probabilities.items()},
        referral=referral if isinstance(referral, str) else _field(referral, "level"),
        modality=_field(gate, "modality"),
        # Answers built before site profiles existed (volumes) carry no profile: the model's own points decided.
        site=None if referral is None or isinstance(referral, str) else (_field(referral, "profile") or "default"),
        client=client_var.get(),
    )
    await audit.record(rec)
