"""Audit log benchmark (not a test): what a durable audit row costs a prediction.

    python benchmarks/audit_benchmark.py [--seconds 3] [--dir runs/audit-bench]

For SQLite ``synchronous=FULL`` (the service's setting: a commit survives power loss) and
``NORMAL`` (survives a process crash only), at 1 and 8 concurrent callers:

* ``group``: the service's :class:`AuditLog` (one writer thread, group commit), driven like
  the routes drive it: asyncio tasks that each ``await log.record(...)`` in a loop.
* ``per-record``: the naive alternative, one transaction per record from 8 threads sharing
  the file (what "log each request in its handler" would do), for comparison.

Prints records/s, the latency ``record()`` adds to a request (p50/p95/p99, ms) and records
per commit. The database lives in ``--dir`` (default ``runs/audit-bench``, on the same disk
as the service's default ``runs/audit.sqlite``; a tmpfs would make fsync free and the numbers
meaningless). Other processes on the machine skew every number: the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import insert  # noqa: E402

from backend.app.services.audit import AuditLog, AuditRecord, Synchronous, audit_table  # noqa: E402

log = logging.getLogger("audit_benchmark")

PROBS = {"CNV": 0.71, "DME": 0.12, "DRUSEN": 0.09, "NORMAL": 0.08}


@dataclass
class Cell:
    mode: str
    synchronous: str
    callers: int
    records: int
    seconds: float
    latencies_ms: list[float]
    commits: int | None

    def row(self) -> str:
        q = statistics.quantiles(self.latencies_ms, n=100) if len(self.latencies_ms) > 1 else [0.0] * 99
        per_commit = f"{self.records / self.commits:.1f}" if self.commits else "1.0"
        return (
            f"| {self.mode:<10} | {self.synchronous:<6} | {self.callers:>7} | {self.records / self.seconds:>9.0f} "
            f"| {q[49]:>7.2f} | {q[94]:>7.2f} | {q[98]:>7.2f} | {per_commit:>11} |"
        )


def _record(i: int) -> AuditRecord:
    return AuditRecord(
        request_id=f"bench-{i:08d}",
        endpoint="predict",
        model_id="oct-resnet18",
        model_version="1.0.0",
        task="oct",
        input_sha256=hashlib.sha256(i.to_bytes(8, "little")).hexdigest(),
        label="CNV",
        confidence=0.71,
        probabilities=PROBS,
        referral="urgent",
        modality="oct",
    )


def _fresh_url(directory: Path, name: str) -> str:
    for suffix in ("", "-wal", "-shm"):
        (directory / f"{name}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{directory / name}"


def bench_group(directory: Path, synchronous: Synchronous, callers: int, seconds: float) -> Cell:
    audit = AuditLog(_fresh_url(directory, "group.sqlite"), synchronous=synchronous)
    audit.start()
    latencies: list[float] = []
    counter = iter(range(10**9))

    async def caller(deadline: float) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await audit.record(_record(next(counter)))
            latencies.append((time.perf_counter() - t0) * 1000)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(caller(start + seconds) for _ in range(callers)))
        return time.perf_counter() - start

    try:
        elapsed = asyncio.run(main())
        commits = audit.commits
    finally:
        audit.stop()
    return Cell("group", synchronous, callers, len(latencies), elapsed, latencies, commits)


def bench_per_record(directory: Path, synchronous: Synchronous, callers: int, seconds: float) -> Cell:
    # Reuse AuditLog only for its engine (same pragmas, same table); bypass its writer thread.
    audit = AuditLog(_fresh_url(directory, "naive.sqlite"), synchronous=synchronous)
    audit.start()
    engine = audit._connect()
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(10**9))
    start = time.perf_counter()

    def worker() -> None:
        mine: list[float] = []
        while time.perf_counter() < start + seconds:
            rec = _record(next(counter))
            rec.ts = datetime.now(UTC)
            t0 = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(insert(audit_table), [asdict(rec)])
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(callers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    finally:
        audit.stop()
    return Cell("per-record", synchronous, callers, len(latencies), elapsed, latencies, None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="duration of each cell")
    p.add_argument("--dir", type=Path, default=REPO / "runs" / "audit-bench", help="where the databases go")
    p.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("backend").setLevel(logging.WARNING)
    args.dir.mkdir(parents=True, exist_ok=True)
    log.info("load average before: %s", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    cells: list[Cell] = []
    for synchronous in ("FULL", "NORMAL"):
        for callers in (1, 8):
            cells.append(bench_group(args.dir, synchronous, callers, args.seconds))
        cells.append(bench_per_record(args.dir, synchronous, 8, args.seconds))
    log.info("load average after:  %s", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    log.info("")
    log.info("| mode       | sync   | callers | records/s | p50 ms  | p95 ms  | p99 ms  | rec/commit  |")
    log.info("|------------|--------|---------|-----------|---------|---------|---------|-------------|")
    for cell in cells:
        log.info(cell.row())
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
