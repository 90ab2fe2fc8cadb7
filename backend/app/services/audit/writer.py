"""The audit log's writer, :class:`AuditLog`: durable appends with group commit, readiness, and its reads.

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
import queue
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError

from backend.app.audit_schemas import AuditRecord
from backend.app.services.audit.database import Synchronous, make_engine, resolve_url
from backend.app.services.audit.queries import page_of, select_rows
from backend.app.services.audit.schema import audit_table, metadata
from backend.app.services.audit.upgrade import add_missing_columns
from backend.app.services.errors import audit_unavailable

logger = logging.getLogger(__name__)


class AuditUnavailable(RuntimeError):
    """The record could not be committed (database down, disk full, log stopped)."""


@dataclass
class _Pending:
    row: dict[str, Any]
    future: concurrent.futures.Future[None]


_STOP = object()


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
                    self._engine = make_engine(
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
        try:
            return select_rows(self._connect(), since, until, limit, model)
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
        """One page of :meth:`query` and the ``since`` of the next page (``None``: this is the last); exact
        even when rows share a timestamp (:func:`~backend.app.services.audit.queries.page_of`)."""
        return page_of(self.query, since, until, limit, model)
