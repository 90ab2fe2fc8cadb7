"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temp dir, on a free loopback port.

Uses Debian's ``postgresql`` package (``scripts/test.sh`` installs it when it runs as root); the
caller skips, with the reason, when the server binaries are missing. PostgreSQL refuses to run as
root, so as root the cluster belongs to the ``postgres`` user the package creates (else ``nobody``)
and every server command runs through ``runuser``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def server_bin_dir() -> Path | None:
    """Folder holding ``initdb`` and ``pg_ctl`` (Debian: /usr/lib/postgresql/<major>/bin, not on PATH)."""
    found = shutil.which("initdb")
    if found:  # resolved: a symlink on PATH (/usr/local/bin/initdb) points into the full bin folder
        bindir = Path(found).resolve().parent
        if (bindir / "pg_ctl").is_file() and (bindir / "createdb").is_file():
            return bindir
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return candidates[-1].parent if candidates else None


def _run_as() -> str | None:
    """The unprivileged user to run the server as when we are root (``None``: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_cluster(user: str = "retina", database: str = "retina") -> Iterator[str]:
    """Start a fresh cluster; yield its SQLAlchemy URL (``postgresql+psycopg://user@127.0.0.1:PORT/database``).

    Trust authentication on loopback only (a scratch server that lives as long as the test). The
    cluster and its folder are removed on exit.

    Raises:
        FileNotFoundError: no PostgreSQL server binaries (callers turn this into a skip).
    """
    bindir = server_bin_dir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    owner = _run_as()
    prefix = ["runuser", "-u", owner, "--"] if owner else []
    # Not pytest's tmp_path: that is private to root (0700), and the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="retina-pg-"))
    data, log = root / "data", root / "server.log"
    if owner:
        info = pwd.getpwnam(owner)
        os.chown(root, info.pw_uid, info.pw_gid)
    port = _free_port()

    def run(*argv: str | Path) -> None:
        done = subprocess.run([*prefix, *map(str, argv)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr}{server_log}")

    started = False
    try:
        run(bindir / "initdb", "-D", data, "-U", user, "--auth=trust", "--encoding=UTF8", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start")
        started = True
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, database)
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """``CREATE DATABASE name`` on the server of ``url``; returns the same URL pointing at it."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as con:  # CREATE DATABASE cannot run in a transaction
        con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return parsed.set(database=name).render_as_string(hide_password=False)
