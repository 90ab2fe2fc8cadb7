"""Fixtures for the deployment tests: the parsed Dockerfiles and compose file, and real server processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from retina.paths import REPO_ROOT
from tests.deploy.parsing import Instruction, load_compose, parse_dockerfile

VENV_BIN = Path(sys.executable).parent


def caddy_password_hash(caddy: str, password: str) -> str:
    """The bcrypt hash ``caddy hash-password`` makes of ``password`` (what RETINA_BASIC_AUTH_HASH holds)."""
    return subprocess.run(
        [caddy, "hash-password", "--plaintext", password], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


@pytest.fixture(scope="session")
def backend_dockerfile() -> list[Instruction]:
    return parse_dockerfile(REPO_ROOT / "Dockerfile.backend")


@pytest.fixture(scope="session")
def frontend_dockerfile() -> list[Instruction]:
    return parse_dockerfile(REPO_ROOT / "Dockerfile.frontend")


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as `docker compose up` sees it with no variable set (every default)."""
    return load_compose(REPO_ROOT / "docker-compose.yml")


# ----------------------------------------------------------------------------- processes


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 3.0) -> int:
    """HTTP status of a GET, 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return 0


@dataclass
class Server:
    """A process started for a test, its output in ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return f"--- last lines of {self.name} ---\n" + "\n".join(lines[-n:])

    def wait_status(self, url: str, want: int = 200, timeout: float = 120.0) -> None:
        """Poll ``url`` until it answers ``want``; fail with the process log if it dies or never does."""
        deadline = time.monotonic() + timeout
        last = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before {url} answered\n{self.tail()}")
            last = http_status(url)
            if last == want:
                return
            time.sleep(0.5)
        pytest.fail(f"{url} answered {last}, not {want}, within {timeout:.0f} s\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the process group, then SIGKILL after ``timeout``; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


class Spawner:
    """``spawner(name, argv, env)`` starts a process in its own session (so its whole group can be
    stopped) from the repository root, its output in ``DIR/NAME.log``; :meth:`stop_all` ends them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Server] = []

    def __call__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Server:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                list(argv),
                cwd=REPO_ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(name, proc, log)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    """Processes stopped at the end of the test."""
    spawner = Spawner(tmp_path)
    yield spawner
    spawner.stop_all()


@pytest.fixture(scope="module")
def spawn_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spawner]:
    """Processes shared by a module's tests, stopped at the end of the module."""
    spawner = Spawner(tmp_path_factory.mktemp("servers"))
    yield spawner
    spawner.stop_all()
