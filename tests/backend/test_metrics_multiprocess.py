"""backend/app/core/multiprocess.py: which folder each uvicorn worker's metrics go to.

The workers here are spawned the way uvicorn spawns its own (multiprocessing, "spawn"), and only
call ``configure()``; tests/backend/test_workers.py runs a real two-worker server.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from backend.app.core import multiprocess


def _worker(base: str, out: multiprocessing.Queue) -> None:
    os.environ.pop(multiprocess.ENV, None)
    path = multiprocess.configure(Path(base))
    out.put((str(path), os.environ.get(multiprocess.ENV)))


def _spawn_workers(base: Path, n: int) -> list[tuple[str, str | None]]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(base), out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    return results


def test_one_process_stays_out_of_multiprocess_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(multiprocess.ENV, raising=False)
    assert multiprocessing.parent_process() is None
    assert multiprocess.configure(tmp_path) is None
    assert multiprocess.ENV not in os.environ
    assert list(tmp_path.iterdir()) == []


def test_a_preset_folder_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(multiprocess.ENV, str(tmp_path / "mine"))
    assert multiprocess.configure(tmp_path / "elsewhere") == tmp_path / "mine"
    assert (tmp_path / "mine").is_dir() and not (tmp_path / "elsewhere").exists()


def test_workers_of_one_server_share_a_new_folder_and_dead_servers_folders_go(tmp_path: Path) -> None:
    me, ticks = os.getpid(), multiprocess.start_ticks(os.getpid())
    if ticks is None:
        pytest.skip("no /proc: folders are named by pid alone and never cleaned")
    stale = tmp_path / f"{multiprocess.PREFIX}{me}-{ticks + 1}"  # our pid, another start: a previous server
    gone = tmp_path / f"{multiprocess.PREFIX}999999999-1"
    alive = tmp_path / f"{multiprocess.PREFIX}1-{multiprocess.start_ticks(1)}"  # pid 1 is running
    other = tmp_path / "unrelated"
    for d in (stale, gone, alive, other):
        d.mkdir()
        (d / "counter_1.db").write_bytes(b"old")
    results = _spawn_workers(tmp_path, 2)
    expected = str(tmp_path / f"{multiprocess.PREFIX}{me}-{ticks}")
    assert results == [(expected, expected)] * 2
    assert Path(expected).is_dir() and list(Path(expected).iterdir()) == []
    assert not stale.exists() and not gone.exists()
    assert alive.exists() and other.exists()
