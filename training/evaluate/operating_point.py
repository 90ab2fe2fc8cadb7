"""Fit a referral operating point on validation predictions and store it in the checkpoint.

    python -m training.evaluate.operating_point --checkpoint models/fundus-resnet18.pt \\
        --fit runs/fundus-eval/val/predictions.csv --point refer --sensitivity 0.87 \\
        --fitted-on "fundus-train validation split (742 images, 371 patients)" \\
        --check dev=runs/fundus-eval/dev/predictions.csv --check idrid=runs/fundus-eval/idrid/predictions.csv

``--fit P.csv`` (repeatable) fits on the pooled predictions; ``--fit-domain NAME=P.csv`` (one per
camera / dataset) makes the target sensitivity hold on every domain. The rule and the points are
described in :mod:`training.evaluate.thresholds`, which does the work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.cli import setup_logging
from training.evaluate.thresholds import store_operating_point

logger = logging.getLogger("training.evaluate.operating_point")


def _named(items: list[str]) -> dict[str, Path]:
    """``["NAME=path", ...]`` -> ``{NAME: Path(path)}``, in order."""
    return {name: Path(path) for name, _, path in (item.partition("=") for item in items)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate.operating_point", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument(
        "--fit", type=Path, action="append", default=[], help="predictions.csv of the validation / out-of-fold set"
    )
    p.add_argument(
        "--fit-domain",
        action="append",
        default=[],
        help="NAME=predictions.csv, one per domain (camera / dataset): the target sensitivity must hold on each",
    )
    p.add_argument("--raw-only", action="store_true", help="fit on raw camera photos only (long side > 300 px)")
    p.add_argument("--point", required=True, help="refer | urgent (fundus); urgent | routine (OCT)")
    p.add_argument("--sensitivity", type=float, required=True, help="target sensitivity on --fit")
    p.add_argument("--fitted-on", required=True, help="words for the card: which split the point was fitted on")
    p.add_argument("--check", action="append", default=[], help="NAME=predictions.csv scored at the threshold")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        store_operating_point(
            args.checkpoint,
            args.point,
            args.sensitivity,
            args.fitted_on,
            fit=args.fit,
            fit_domains=_named(args.fit_domain),
            checks=_named(args.check),
            raw_only=args.raw_only,
        )
    except ValueError as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
