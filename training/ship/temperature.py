"""Store a cross-fitted temperature from a cross-validation ``predictions.csv`` in a checkpoint.

    python -m training.ship.temperature --checkpoint runs/oct-simplecnn-cv/final/best.pt \\
        --predictions runs/oct-simplecnn-cv/predictions.csv

The temperature is :func:`training.evaluate.calibration.crossfit_temperature` of the
out-of-fold predictions, grouped by patient (from a ``patient_id`` column, else the file names).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np

from retina import checkpoint
from training.cli import setup_logging
from training.evaluate.calibration import crossfit_temperature

logger = logging.getLogger("training.ship.temperature")


def _groups_from_paths(paths: list[str]) -> np.ndarray:
    """Patient ids from OCT2017 (``CLASS-PATIENT-N``) or EyePACS (``PATIENT_left``) file names."""
    out = []
    for p in paths:
        stem = Path(p).stem
        parts = stem.split("-")
        out.append(parts[1] if len(parts) >= 3 else stem.split("_")[0])
    return np.asarray(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.ship.temperature",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint to update in place (atomically)")
    p.add_argument("--predictions", type=Path, required=True, help="CSV with path,label and p_<class> columns")
    args = p.parse_args(argv)
    setup_logging()
    ckpt = checkpoint.read(args.checkpoint)
    names = list(ckpt["class_names"])
    with args.predictions.open(newline="") as f:
        rows = list(csv.DictReader(f))
    probs = np.asarray([[float(r[f"p_{c}"]) for c in names] for r in rows])
    labels = np.asarray([names.index(r["label"]) for r in rows])
    groups = (
        np.asarray([r["patient_id"] for r in rows])
        if "patient_id" in rows[0]
        else _groups_from_paths([r["path"] for r in rows])
    )
    # Log-probabilities are logits up to a per-row constant, which softmax ignores.
    logits = np.log(np.clip(probs, 1e-6, 1.0))
    cal = crossfit_temperature(logits, labels, groups)
    checkpoint.update_meta(args.checkpoint, calibration=cal)
    logger.info(
        "%s: T=%.3f from %d out-of-fold predictions (%d patients); ECE %.3f -> %.3f (cross-fitted)",
        args.checkpoint,
        cal["temperature"],
        len(labels),
        cal["groups"],
        cal["ece_val_before"],
        cal["ece_crossfit_after"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
