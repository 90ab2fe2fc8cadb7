"""Command line of the gate fitter.

    python -m training.fit_gate --data ../shared/data --out models/image-gate.pt --report-dir runs/gate
    python -m training.fit_gate --check-only --out models/image-gate.pt   # the dev checks only, no training

(``python -m training.gate`` is the same command.)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from retina.gate import ImageGate
from retina.paths import data_dir
from training.gate.fit import FitConfig, run
from training.gate.report import degraded_check

logger = logging.getLogger("training.gate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="data root with oct-*, fundus-*, negatives/")
    p.add_argument("--out", type=Path, default=Path("models/image-gate.pt"))
    p.add_argument("--report-dir", type=Path, default=Path("runs/gate"))
    p.add_argument("--folds", type=int, default=FitConfig.folds)
    p.add_argument("--epochs", type=int, default=FitConfig.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="at most this many images per set (smoke runs)")
    p.add_argument("--per-epoch", type=int, default=FitConfig.per_epoch, help="views drawn per epoch, classes evenly")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all)")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="gate views cache ('' for none)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="no CNN training: thresholds, floor, limits, grade and report anew from --report-dir/oof.npz and --out",
    )
    p.add_argument(
        "--check-only",
        action="store_true",
        help="no training: re-run the dev, degraded and other-camera checks on the gate at --out and log them",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = args.data or data_dir()
    if args.check_only:
        checks = degraded_check(ImageGate.load(args.out), root)
        for table, rows in checks.items():
            for k, v in rows.items():
                logger.info("%s | %s | %s", table, k, v)
        return
    cfg = FitConfig(args.folds, args.epochs, args.per_epoch, args.seed, args.limit)
    cache = args.cache_dir if str(args.cache_dir) else None
    res = run(root, args.out, args.report_dir, cfg, cache_dir=cache, reuse=args.reuse)
    logger.info("photos accepted (CV): %s", res["false_acceptance"]["photos"])
    logger.info("real retinal images not retinal (CV): %s", res["not_retinal_all"])
    logger.info("fundus-dev: %s", res["fundus_dev"])
    logger.info("cost: %s", res["cost"])
