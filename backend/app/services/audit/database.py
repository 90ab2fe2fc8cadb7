"""Where the audit log lives and how it is opened: the URL (``RETINA_AUDIT_DB``, else a SQLite file) and an
engine tuned per database (SQLite: WAL and ``synchronous``; PostgreSQL: connect and statement timeouts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

DEFAULT_PATH = Path("runs") / "audit.sqlite"
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


def resolve_url(url: str | None) -> str:
    """``RETINA_AUDIT_DB`` or the default SQLite file ``runs/audit.sqlite`` under the working directory."""
    if url:
        return url
    return f"sqlite:///{(Path.cwd() / DEFAULT_PATH).as_posix()}"


def make_engine(url: str, synchronous: Synchronous, busy_timeout_ms: int, statement_timeout_ms: int = 5000) -> Engine:
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
