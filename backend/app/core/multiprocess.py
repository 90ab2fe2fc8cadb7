"""Prometheus multiprocess mode for ``uvicorn --workers N``: one ``/metrics`` view of every worker.

prometheus_client keeps each process's counters in memory, so with several uvicorn workers a
scrape would see only the worker that answered it. In multiprocess mode every worker writes its
values to mmap files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them
(``MultiProcessCollector``, which prometheus-fastapi-instrumentator's endpoint uses whenever the
variable is set). prometheus_client reads the variable when it is first imported, so
:func:`configure` runs in ``backend/main.py`` before the app (and prometheus_client) is imported.

The directory must be fresh for each server start (old files would be added to the new
counts), and uvicorn has no hook that runs in the supervisor before it starts the workers. So
each worker derives the directory from its supervisor: ``<tmp>/retina-metrics-<pid>-<start>``,
the supervisor's pid and its start time in clock ticks since boot (``/proc/<pid>/stat``), which
is the same for all workers of one server, and new for the next (a container's supervisor is pid
1 every time; its start time is not). The worker that creates the directory removes those of
supervisors that are gone.

* One process (``uvicorn backend.main:app`` without workers, tests): nothing changes; each app
  keeps its own registry.
* ``PROMETHEUS_MULTIPROC_DIR`` already set: used as it is (then wiping it before each start, as
  prometheus_client asks, is the operator's job).

Kept free of prometheus_client imports at module level on purpose: importing it here would fix
its mode before the variable is set.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "retina-metrics-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)$")


def enabled() -> bool:
    """Whether this process runs in prometheus_client's multiprocess mode."""
    return bool(os.environ.get(ENV))


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22); ``None`` when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall = index 19 after pid, comm
    except (IndexError, ValueError):
        return None


def _alive(pid: int, ticks: int) -> bool:
    return start_ticks(pid) == ticks


def _remove_stale(base: Path, keep: Path) -> None:
    """Remove ``retina-metrics-<pid>-<start>`` folders whose supervisor is no longer running."""
    for entry in base.glob(f"{PREFIX}*"):
        m = _NAME.match(entry.name)
        if entry == keep or not m or not entry.is_dir() or _alive(int(m.group(1)), int(m.group(2))):
            continue
        shutil.rmtree(entry, ignore_errors=True)  # another worker may be removing it too


def configure(base: Path | None = None) -> Path | None:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for a uvicorn worker; returns the directory (``None``: one process).

    Args:
        base: where the per-server folders go; default the temp dir (``TMPDIR``; ``/tmp``, an
            ``emptyDir`` in deploy/k8s).
    """
    if os.environ.get(ENV):
        path = Path(os.environ[ENV])
        path.mkdir(parents=True, exist_ok=True)
        return path
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return None  # not a spawned worker: a single-process server keeps per-app registries
    ticks = start_ticks(parent.pid)
    base = base or Path(tempfile.gettempdir())
    if ticks is None:  # no /proc (not Linux): the pid alone, and no clean-up of old folders
        path = base / f"{PREFIX}{parent.pid}"
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = base / f"{PREFIX}{parent.pid}-{ticks}"
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            pass  # a sibling worker of the same server made it
        else:
            _remove_stale(base, keep=path)
    os.environ[ENV] = str(path)
    return path


def mark_process_dead(pid: int | None = None) -> None:
    """At worker exit: drop this worker's live gauges (``retina_model_loaded``) from the sums.

    Its counters and histograms stay: they are totals, and a scrape must never see them go down.
    """
    if not enabled():
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid())
