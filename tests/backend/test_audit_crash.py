"""Kill -9 the real server under load: every request that got a 200 is in the audit log."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import uvicorn_server

THREADS = 4
KILL_AFTER = 60  # answered requests before the SIGKILL


@pytest.mark.slow
def test_sigkill_mid_load_loses_no_answered_request(
    api_models_dir: Path, oct_images: list[Path], tmp_path: Path
) -> None:
    db = tmp_path / "audit.sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINA_") or k == "RETINA_DATA_DIR"}
    env |= {
        "RETINA_MODELS_DIR": str(api_models_dir),
        "RETINA_DEVICE": "cpu",
        "RETINA_AUDIT_DB": f"sqlite:///{db}",
        "RETINA_INSECURE_NO_AUTH": "true",  # a loopback-only test server
    }
    images = [p.read_bytes() for p in oct_images[:8]]
    answered: list[str] = []
    ended_by_error = [False] * THREADS
    unexpected: list[str] = []  # asserted in the main thread (an assert in a thread fails nothing)
    lock = threading.Lock()
    stop_by = time.monotonic() + 180  # safety net only: the threads end when the server dies

    def hammer(worker: int, base: str) -> None:
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

    with uvicorn_server(env, tmp_path / "server.log") as (proc, base):
        threads = [threading.Thread(target=hammer, args=(w, base)) for w in range(THREADS)]
        for t in threads:
            t.start()
        while len(answered) < KILL_AFTER and proc.poll() is None and time.monotonic() < stop_by:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown, no flush, no lifespan exit
        proc.wait(30)
        for t in threads:
            t.join(60)

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
