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
        assert "stopped" in output()
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
