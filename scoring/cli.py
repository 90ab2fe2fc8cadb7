"""Score an archive of OCT scans / fundus photos: one row per file, the API's pipeline, resumable.

    python -m scoring INPUT --model oct|fundus|auto --out results.parquet|results.csv
        [--workers N] [--chunk-size 32] [--models-dir models/]
        [--ray ADDRESS|auto|local --ray-actors 2 --ray-batch-size 32 --ray-cpus-per-actor 1]

INPUT is a folder (recursive; DICOM folders too), a CSV with a ``path`` column, or one file.
Each file is decoded, gated, prepared, scored, calibrated and given its referral exactly as
``POST /predict?model=...`` would (``scoring/batch.py`` says how); a file that is not a usable
image is an error row. ``--out``: ``.parquet`` (a folder of part files) or ``.csv``. Rerunning
with the same ``--out`` skips the files already in it, so a killed or interrupted run resumes.

Locally the work goes to ``--workers`` processes (default: one per core this process may use,
each loading the models once); ``--ray`` runs the same scorer on a Ray cluster with Ray Data
(``pip install --group scale``).
"""

from __future__ import annotations

import os

# As the service (backend/__init__.py): torch's OpenMP threads sleep rather than spin between
# parallel regions, which costs several times the CPU on a busy box. Before torch is imported;
# spawned pool workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from tqdm import tqdm  # noqa: E402

from retina.errors import CheckpointError  # noqa: E402
from retina.paths import DEFAULT_MODELS_DIR  # noqa: E402
from retina.referral import ReferralThresholds  # noqa: E402
from scoring.batch import (  # noqa: E402
    AUTO,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    BatchScorer,
    RayUnavailable,
    ScoreConfig,
    connect_ray,
    score_local,
    score_ray,
)
from scoring.inputs import list_inputs  # noqa: E402
from scoring.sinks import ResultSink, read_rows, write_rows  # noqa: E402

log = logging.getLogger("scoring.cli")


def cpu_count() -> int:
    """Cores this process may use (CPU affinity / cgroup pinning), not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scoring", description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="folder (recursive), CSV of paths (column 'path'), or one file")
    p.add_argument("--model", default=AUTO, help="oct | fundus | auto (by the image gate) | a model id (default auto)")
    p.add_argument("--out", type=Path, required=True, help="results.parquet (folder of parts) or results.csv")
    p.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="checkpoints (RETINA_MODELS_DIR)")
    p.add_argument("--gate-file", type=Path, default=None, help="image gate (default: as the service)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--engine",
        default=os.environ.get("RETINA_ENGINE", "auto"),
        help="forward pass, as the service's RETINA_ENGINE: auto | torch | onnxruntime | onnxruntime-int8 | openvino "
        "| openvino-int8",
    )
    p.add_argument("--workers", type=int, default=None, help="local processes (default: the usable cores)")
    p.add_argument("--chunk-size", type=int, default=32, help="files per task handed to a local worker")
    p.add_argument("--flush-rows", type=int, default=256, help="rows per write (what a kill can cost at most)")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS)
    p.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_BYTES / 1e6, help="larger files: error rows")
    p.add_argument("--ray", metavar="ADDRESS", default=None, help="run on Ray: a cluster address, 'auto' or 'local'")
    p.add_argument("--ray-actors", type=int, default=2, help="scoring actors (each loads the models once)")
    p.add_argument("--ray-batch-size", type=int, default=32, help="files per map_batches call")
    p.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="CPUs each actor reserves (torch threads)")
    for name, what in (
        ("referral-oct-urgent", "OCT urgent: P(CNV)+P(DME) >="),
        ("referral-oct-routine", "OCT routine: P(CNV)+P(DME)+P(DRUSEN) >="),
        ("referral-fundus-refer", "fundus refer: P(grade>=2) >="),
        ("referral-fundus-urgent", "fundus urgent: P(grade 4) >="),
    ):
        p.add_argument(f"--{name}", type=float, default=None, help=f"{what} this (default: the checkpoint's)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the scoring; 0 when every file has its row (error rows included), 2 on a usage, model or cluster problem."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    thresholds = ReferralThresholds(
        args.referral_oct_urgent, args.referral_oct_routine, args.referral_fundus_refer, args.referral_fundus_urgent
    )
    workers = args.workers or cpu_count()
    config = ScoreConfig(
        models_dir=args.models_dir.resolve(),
        model=args.model,
        gate_file=args.gate_file.resolve() if args.gate_file else None,
        max_image_pixels=args.max_image_pixels,
        max_file_bytes=int(args.max_file_mb * 1e6),
        thresholds=thresholds,
        device=args.device,
        engine=args.engine,
        # The cores shared out between the worker processes, one torch team each.
        torch_threads=max(1, cpu_count() // workers),
    )
    if args.out.suffix.lower() not in (".parquet", ".csv"):
        log.error("--out must end in .parquet or .csv, not %r", args.out.name)
        return 2
    try:
        paths = list_inputs(args.input)
        if args.ray:
            connect_ray(args.ray)  # before the models load: a missing cluster is one line, not a traceback
        # Load once here first: a model the service would refuse stops the run before any worker
        # starts, with one clear message instead of one traceback per worker.
        scorer = BatchScorer(config)
        sink = ResultSink.open(args.out)
    except (FileNotFoundError, ValueError, KeyError, CheckpointError, RayUnavailable) as e:
        log.error("%s", e)
        return 2
    done = sink.done()
    todo = [p for p in paths if p not in done]
    log.info(
        "%d files under %s: %d already in %s, %d to score with %s on %s",
        len(paths),
        args.input,
        len(paths) - len(todo),
        args.out,
        len(todo),
        scorer.describe(),
        f"Ray ({args.ray}, {args.ray_actors} actors)" if args.ray else f"{workers} local worker(s)",
    )
    if args.ray:
        batches = score_ray(todo, config, args.ray, args.ray_actors, args.ray_batch_size, args.ray_cpus_per_actor)
    else:
        batches = score_local(todo, config, workers, args.chunk_size, scorer if workers == 1 else None)
    start = time.perf_counter()
    try:
        with tqdm(total=len(todo), unit="img", desc="scoring") as bar:
            for n in write_rows(batches, sink, args.flush_rows):
                bar.update(n)
    finally:
        sink.close()
    elapsed = time.perf_counter() - start
    rows = read_rows(args.out)
    outcome = Counter(r["error"] or (r["referral_level"] or "ok") for r in rows)
    log.info(
        "%d rows in %s (%d new in %.1f s, %.1f img/s); outcomes: %s",
        len(rows),
        args.out,
        len(todo),
        elapsed,
        len(todo) / elapsed if elapsed > 0 else 0.0,
        dict(outcome.most_common()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
