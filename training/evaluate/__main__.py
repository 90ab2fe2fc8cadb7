"""Evaluate a checkpoint on a dataset: metrics with bootstrap CIs, report and plots.

    python -m training.evaluate --checkpoint runs/oct_simplecnn/best.pt \\
        --data ../shared/data/oct-dev --out runs/oct_simplecnn/eval [--split test] [--subset raw]

The model, its preprocessing and its temperature come from the checkpoint alone. When the
dataset's fingerprint equals the training one, the training split is recomputed from the
checkpoint's data settings (same cap, fractions and seed) and the default split is
``test``; on any other dataset (e.g. fundus-dev for a model trained on fundus-train) the
default is ``all``. Writes ``OUT/metrics.json``, ``OUT/report.md``,
``OUT/confusion_matrix.png``, ``OUT/roc.png`` and ``OUT/predictions.csv``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from training.cli import run_cli
from training.evaluate.run import EvalRequest, evaluate_checkpoint

logger = logging.getLogger("training.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a best.pt written by training.train / training.cv")
    p.add_argument("--data", required=True, help="dataset root or .npz (any supported format)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--split", choices=("test", "val", "train", "all"), help="default: test on the training data, else all"
    )
    p.add_argument(
        "--subset",
        choices=("raw",),
        action="append",
        default=[],
        help="also report raw photos only (long side > 300 px)",
    )
    p.add_argument(
        "--part",
        type=int,
        default=None,
        help="with --data a,b: score only the rows of the K-th dataset (0-based) of the recomputed split",
    )
    p.add_argument("--format", default=None, help="dataset format (default: the training one, else auto)")
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="prepared-image cache (default: the training config's)")
    return p


def _main(args: argparse.Namespace) -> None:
    evaluate_checkpoint(
        EvalRequest(
            checkpoint=args.checkpoint,
            data=args.data,
            out=args.out,
            split=args.split,
            subsets=tuple(args.subset),
            part=args.part,
            format=args.format,
            n_bootstrap=args.n_bootstrap,
            device=args.device,
            batch_size=args.batch_size,
            threads=args.threads,
            cache_dir=args.cache_dir,
        )
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _main, argv, logger)


if __name__ == "__main__":
    sys.exit(main())
