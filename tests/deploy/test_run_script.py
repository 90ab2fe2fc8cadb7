"""scripts/run.sh (the README's run command): starts both services, serves /ready and the UI, stops on
SIGTERM and Ctrl-C.

It reuses this test's virtual env (``RETINA_VENV`` = the running interpreter's env, ``RETINA_NO_INSTALL=1``:
no network, no reinstall) and serves the ``tiny_models_dir`` checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retina.paths import REPO_ROOT
from tests.support import free_port, http_status

RUN = REPO_ROOT / "scripts" / "run.sh"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_")}
    env.update(RETINA_VENV=sys.prefix, RETINA_NO_INSTALL="1", **extra)
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_refuses_a_busy_port_with_a_clear_message() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        r = subprocess.run(
            ["bash", str(RUN)],
            env=_env(RETINA_BACKEND_PORT=str(busy), RETINA_FRONTEND_PORT=str(free_port())),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1
    assert f"port {busy}" in r.stderr and "RETINA_BACKEND_PORT" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm-to-script", "ctrl-c-to-group"])
def test_run_script_serves_both_and_stops_cleanly(how: str, tmp_path: Path, tiny_models_dir: Path) -> None:
    bport, fport = free_port(), free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["bash", str(RUN)],
            cwd=tmp_path,  # the script must find the repository itself
            env=_env(
                RETINA_BACKEND_PORT=str(bport),
                RETINA_FRONTEND_PORT=str(fport),
                RETINA_MODELS_DIR=str(tiny_models_dir),
                HOME=str(tmp_path),
            ),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A shell started with SIGINT ignored cannot trap it (POSIX), and a test run launched
            # as a background job (`cmd &`) inherits exactly that: give run.sh a terminal's default.
            preexec_fn=_default_sigint,
        )
    pgid = proc.pid

    def output() -> str:
        return log.read_text(errors="replace")

    try:
        deadline = time.monotonic() + 150
        while "RetinaScope is running" not in output():
            if proc.poll() is not None:
                pytest.fail(f"run.sh exited with {proc.returncode} before it was up:\n{output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"run.sh did not report both services up:\n{output()}")
            time.sleep(0.5)
        text = output()
        assert f"http://127.0.0.1:{fport}" in text and f"http://127.0.0.1:{bport}" in text
        assert http_status(f"http://127.0.0.1:{bport}/ready") == 200, output()
        assert http_status(f"http://127.0.0.1:{fport}/_stcore/health") == 200, output()
        # the UI was pointed at this backend, not at a default
        assert f"backend: http://127.0.0.1:{bport}" in text

        if how == "sigterm-to-script":
            proc.send_signal(signal.SIGTERM)  # e.g. systemd/kill: only the script; its trap stops the children
        else:
            os.killpg(pgid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
        rc = proc.wait(timeout=60)
        assert rc == 0, output()
        assert "stopped" in output() and "unexpectedly" not in output()
        assert "killing it" not in output(), "a service ignored SIGTERM and had to be killed"
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(pgid), "a child of run.sh outlived it"
        assert http_status(f"http://127.0.0.1:{bport}/health") == 0
        assert http_status(f"http://127.0.0.1:{fport}/_stcore/health") == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(10)


# Stand-ins for uvicorn and streamlit: serve 200 on their --port and stop cleanly on SIGINT/SIGTERM (as both do).
_STUB_SERVER = """
import http.server, signal, sys, threading
port = int(sys.argv[1])
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ok)
stop = lambda *_: threading.Thread(target=server.shutdown).start()
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
server.serve_forever()
"""
_STUB_LAUNCHER = """#!/usr/bin/env bash
while [ $# -gt 0 ]; do case "$1" in --port | --server.port) port=$2 ;; esac; shift; done
exec "$(dirname "$0")/python" "$(dirname "$0")/stub_server.py" "$port"
"""


def _stub_venv(root: Path) -> Path:
    bin_dir = root / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "stub_server.py").write_text(_STUB_SERVER)
    for tool in ("uvicorn", "streamlit"):
        (bin_dir / tool).write_text(_STUB_LAUNCHER)
        (bin_dir / tool).chmod(0o755)
    return bin_dir.parent


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_ctrl_c_stops_quietly_even_when_the_shell_cannot_trap_it(tmp_path: Path) -> None:
    """Started with SIGINT ignored (a background job of another script), run.sh cannot trap Ctrl-C, but the
    servers still get it and stop: that is an interrupt, not "a service stopped unexpectedly"."""
    bport, fport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_")}
    env.update(
        RETINA_VENV=str(_stub_venv(tmp_path)),
        RETINA_NO_INSTALL="1",
        RETINA_BACKEND_PORT=str(bport),
        RETINA_FRONTEND_PORT=str(fport),
    )
    log = tmp_path / "run.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["bash", str(RUN)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_ignore_sigint,
        )
    try:
        deadline = time.monotonic() + 60
        while "RetinaScope is running" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        rc = proc.wait(timeout=30)
        text = log.read_text(errors="replace")
        assert rc == 0, text
        assert "stopped" in text and "unexpectedly" not in text and "error" not in text
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
