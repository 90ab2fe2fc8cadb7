"""Kill -9 the real server under load: every request that got a 200 is in the audit log."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from retina.paths import REPO_ROOT

THREADS = 4
KILL_AFTER = 60  # answered requests before the SIGKILL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready:\n" + log.read_text()
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_mid_load_loses_no_answered_request(
    api_models_dir: Path, oct_images: list[Path], tmp_path: Path
) -> None:
    db = tmp_path / "audit.sqlite"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_") or k == "RETINA_DATA_DIR"}
    env |= {
        "RETINA_MODELS_DIR": str(api_models_dir),
        "RETINA_DEVICE": "cpu",
        # What is under test is the audit log, not the image gate (whose fitted file this
        # models dir may lack); the real OCT scans sent here would pass it anyway.
        "RETINA_GATE_ENABLED": "false",
        "RETINA_AUDIT_DB": f"sqlite:///{db}",
    }
    log_path = tmp_path / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    images = [p.read_bytes() for p in oct_images[:8]]
    answered: list[str] = []
    ended_by_error = [False] * THREADS
    unexpected: list[str] = []  # asserted in the main thread (an assert in a thread fails nothing)
    lock = threading.Lock()
    stop_by = time.monotonic() + 180  # safety net only: the threads end when the server dies

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            i = 0
            while time.monotonic() < stop_by:
                rid = f"crash-{worker}-{i}"
                try:
                    r = c.post(
                        "/predict?model=oct",
                        files={"file": ("scan.jpeg", images[i % len(images)], "image/jpeg")},
                        headers={"X-Request-ID": rid},
                    )
                except httpx.TransportError:
                    ended_by_error[worker] = True
                    return
                if r.status_code != 200 or r.headers.get("x-request-id") != rid:
                    unexpected.append(f"{rid}: {r.status_code} {r.text[:200]}")
                    return
                with lock:
                    answered.append(rid)
                i += 1

    try:
        _wait_ready(proc, base, log_path)
        threads = [threading.Thread(target=hammer, args=(w,)) for w in range(THREADS)]
        for t in threads:
            t.start()
        while len(answered) < KILL_AFTER and proc.poll() is None and time.monotonic() < stop_by:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no flush, no lifespan exit
        proc.wait(30)
        for t in threads:
            t.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    assert not unexpected, unexpected
    assert proc.returncode == -signal.SIGKILL
    assert all(ended_by_error), "every client was still sending when the server died"
    assert len(answered) >= KILL_AFTER
    con = sqlite3.connect(db)  # opening replays the WAL the killed process left behind
    try:
        logged = [rid for (rid,) in con.execute("SELECT request_id FROM audit_log")]
    finally:
        con.close()
    assert len(logged) == len(set(logged)), "a request was logged twice"
    missing = set(answered) - set(logged)
    assert not missing, f"{len(missing)} answered requests missing from the audit log: {sorted(missing)[:5]}"
