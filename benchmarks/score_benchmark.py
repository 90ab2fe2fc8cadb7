"""Batch-scoring benchmark (not a test): images/s of ``python -m scoring`` locally and on Ray, beside /predict/batch.

    python benchmarks/score_benchmark.py [--data-dir ../shared/data] [--oct-limit 46] [--fundus-limit 40]
        [--engines local1,local2,ray,service] [--ray-actors 2]

For each modality (real images: oct-dev scored with ``--model oct``, fundus-dev with ``--model
fundus``; ``--samples`` uses ``samples/`` instead) and each engine, the same files are scored and
written to a throwaway Parquet output, as ``python -m scoring`` does:

* ``local1`` / ``local2``: :func:`scoring.batch.score_local` with 1 worker (in this process, torch
  with every core) and 2 spawned workers (each loads the models; one torch thread each);
* ``ray``: :func:`scoring.batch.score_ray` on a local Ray instance (``ray.init(num_cpus=cores)``,
  started once and timed apart), ``--ray-actors`` actors of one CPU each;
* ``service``: the real service (``uvicorn`` started as ``benchmarks/serve_benchmark.py`` does,
  reusing its helpers) sent the files through ``POST /predict/batch`` in requests of
  ``max_batch_files`` (16) files, two requests in flight.

Columns: ``total s`` is the wall time including worker start and model loading (what a user
waits), ``start s`` the time until the first rows came back (for the service: none, it is
started and warmed before the clock starts), ``img/s`` = files / total, and ``steady img/s`` the
rate after the first rows. The load average is printed before and after: on a shared machine
every figure is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the service and the CLI; before torch is imported

import httpx  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.serve_benchmark import free_port, loadavg, start_server, wait_ready  # noqa: E402
from retina.paths import DEFAULT_MODELS_DIR, data_dir  # noqa: E402
from scoring.batch import BatchScorer, ScoreConfig, score_local, score_ray  # noqa: E402
from scoring.cli import cpu_count  # noqa: E402
from scoring.sinks import ParquetParts  # noqa: E402

log = logging.getLogger("score_benchmark")

ENGINES = ("local1", "local2", "ray", "service")


@dataclass
class Run:
    task: str
    engine: str
    n: int
    errors: int
    total_s: float
    start_s: float
    first_n: int

    @property
    def rate(self) -> float:
        return self.n / self.total_s if self.total_s > 0 else 0.0

    @property
    def steady(self) -> float:
        rest = self.total_s - self.start_s
        return (self.n - self.first_n) / rest if rest > 0 and self.n > self.first_n else float("nan")


def inputs(task: str, root: Path, limit: int, samples: bool) -> list[str]:
    if samples:
        files = sorted((REPO / "samples" / task).glob("*"))
    else:
        sub = {"oct": "oct-dev/train/*/*.jpeg", "fundus": "fundus-dev/train/*.jpeg"}[task]
        files = sorted(root.glob(sub))
    files = files[:limit]
    if not files:
        raise SystemExit(f"no {task} images (set --data-dir or RETINA_DATA_DIR, or use --samples)")
    return [str(f) for f in files]


def measure(task: str, engine: str, batches: Iterator[list[dict[str, Any]]], out: Path, start: float) -> Run:
    """Consume ``batches`` into a Parquet output (as the CLI does), timing the first rows and the end."""
    sink = ParquetParts(out)
    n = errors = first_n = 0
    first = float("nan")
    for rows in batches:
        errors += sum(r["error"] is not None for r in rows)
        sink.write(rows)
        if n == 0:
            first, first_n = time.perf_counter() - start, len(rows)
        n += len(rows)
    return Run(task, engine, n, errors, time.perf_counter() - start, first, first_n)


def service_run(task: str, paths: list[str], base: str, per_request: int = 16, in_flight: int = 2) -> Run:
    """All files through ``/predict/batch?model=<task>``, ``per_request`` per request, ``in_flight`` at once."""
    groups = [paths[i : i + per_request] for i in range(0, len(paths), per_request)]
    bodies = [[("files", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in g] for g in groups]

    async def go() -> tuple[int, int]:
        ok = errors = 0
        queue = list(range(len(bodies)))
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:

            async def worker() -> None:
                nonlocal ok, errors
                while queue:
                    files = bodies[queue.pop(0)]
                    r = await client.post(f"/predict/batch?model={task}", files=files)
                    r.raise_for_status()
                    for item in r.json()["results"]:
                        ok += 1
                        errors += "error" in item

            await asyncio.gather(*(worker() for _ in range(in_flight)))
        return ok, errors

    # One warm-up request outside the clock (first-call paths), as serve_benchmark warms its connections.
    httpx.post(f"{base}/predict/batch?model={task}", files=bodies[0][:1], timeout=600).raise_for_status()
    start = time.perf_counter()
    n, errors = asyncio.run(go())
    return Run(task, "service", n, errors, time.perf_counter() - start, 0.0, 0)


def start_ray(cores: int, tries: int = 3) -> None:
    """``ray.init`` of a local instance; retried, since Ray gives its raylet a fixed 30 s to register
    and a loaded machine can miss that (seen here at load average 11 on 2 cores)."""
    import ray

    for attempt in range(1, tries + 1):
        try:
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
            return
        except Exception as e:  # Ray raises a bare Exception for the startup timeout
            log.warning("ray.init failed (try %d of %d): %s", attempt, tries, e)
            ray.shutdown()
            if attempt == tries:
                raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    ap.add_argument("--data-dir", type=Path, default=data_dir())
    ap.add_argument("--samples", action="store_true", help="score samples/ instead of oct-dev / fundus-dev")
    ap.add_argument("--oct-limit", type=int, default=46)
    ap.add_argument("--fundus-limit", type=int, default=40)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--ray-actors", type=int, default=2)
    ap.add_argument("--ray-batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "scoring.batch", "ray", "ray.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    cores = cpu_count()
    log.info("machine: %d usable cores, load average before: %s", cores, loadavg())
    work = {
        "oct": inputs("oct", args.data_dir, args.oct_limit, args.samples),
        "fundus": inputs("fundus", args.data_dir, args.fundus_limit, args.samples),
    }
    tmp = Path(tempfile.mkdtemp(prefix="retina-score-bench-"))
    runs: list[Run] = []
    ray_start_s = float("nan")
    try:
        for task, paths in work.items():
            for engine in engines:
                if engine == "service":
                    continue
                out = tmp / f"{task}-{engine}.parquet"
                workers = 2 if engine == "local2" else 1
                config = ScoreConfig(models_dir=args.models_dir.resolve(), model=task, torch_threads=cores // workers)
                start = time.perf_counter()
                if engine.startswith("local"):
                    # local1 loads its models in here, inside the clock, as the CLI does.
                    scorer = BatchScorer(config) if workers == 1 else None
                    batches = score_local(paths, config, workers, chunk_size=8, scorer=scorer)
                elif engine == "ray":
                    import ray

                    if not ray.is_initialized():
                        t0 = time.perf_counter()
                        start_ray(cores)
                        ray_start_s = time.perf_counter() - t0
                        start = time.perf_counter()
                    batches = score_ray(paths, config, None, args.ray_actors, args.ray_batch_size, 1.0)
                else:
                    raise SystemExit(f"unknown engine {engine!r}")
                run = measure(task, engine, batches, out, start)
                log.info("%s %s: %d files in %.1f s (%d errors)", task, engine, run.n, run.total_s, run.errors)
                runs.append(run)
        if "ray" in engines:
            import ray

            ray.shutdown()
        if "service" in engines:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start_server(args.models_dir, port, 1, {})
            try:
                wait_ready(base, proc)
                for task, paths in work.items():
                    run = service_run(task, paths, base)
                    log.info("%s service: %d files in %.1f s (%d errors)", task, run.n, run.total_s, run.errors)
                    runs.append(run)
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    log.info("")
    log.info("## Batch scoring, %d usable cores (load average after: %s)", cores, loadavg())
    if ray_start_s == ray_start_s:  # not NaN
        log.info("Ray local instance started in %.1f s (not counted in the ray rows)", ray_start_s)
    log.info("| modality | engine | files | errors | total s | start s | img/s | steady img/s |")
    log.info("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        log.info(
            "| %s | %s | %d | %d | %.1f | %.1f | %.2f | %.2f |",
            r.task,
            r.engine,
            r.n,
            r.errors,
            r.total_s,
            r.start_s,
            r.rate,
            r.steady,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
