"""Classical OCT anchor: multiscale HOG + linear SVM, patient-grouped K-fold CV.

    python -m training.evaluate.hog_svm --data ../shared/data/oct-dev,../shared/data/oct-train \\
        --preset oct_band_192 --folds 5 --out runs/oct-hog-svm

After Srinivasan et al. 2014 (Biomed. Opt. Express 5(10):3568): denoise, flatten the retina,
then histograms of oriented gradients at several scales and a linear SVM. Here the
flattening is the project's own ``oct_band`` preprocessing (the same ``prepare`` the CNNs
and the service use), denoising a median filter, HOG from scikit-image and the SVM from
scikit-learn (``LinearSVC`` calibrated to probabilities by Platt scaling inside the
training folds). The same folds as ``training.cv`` (``grouped_folds``, same seed), so the
table in ``training/README.md`` compares like with like. Writes the same evaluation files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from skimage.feature import hog
from skimage.filters import median
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from tqdm import tqdm

from retina.preprocessing import get_preset
from training.cli import setup_logging
from training.data.pixels import prepare_all
from training.data.splits import grouped_folds
from training.data.tables import read_tables
from training.evaluate.metrics import compute_metrics
from training.evaluate.report import write_evaluation

logger = logging.getLogger("training.evaluate.hog_svm")

# (pixels_per_cell, cells_per_block): fine cells see cysts and drusen, coarse ones the band shape.
SCALES: tuple[tuple[int, int], ...] = ((8, 2), (16, 2), (32, 1))


def hog_features(img: np.ndarray) -> np.ndarray:
    """Multiscale HOG of one prepared B-scan ``uint8 (S, S)`` -> ``float32 (D,)``."""
    den = median(img, np.ones((3, 3), dtype=bool))
    parts = [
        hog(den, orientations=9, pixels_per_cell=(c, c), cells_per_block=(b, b), feature_vector=True) for c, b in SCALES
    ]
    return np.concatenate(parts).astype(np.float32)


def make_classifier(c: float = 0.01, seed: int = 0) -> CalibratedClassifierCV:
    svm = make_pipeline(StandardScaler(), LinearSVC(C=c, class_weight="balanced", max_iter=5000, random_state=seed))
    return CalibratedClassifierCV(svm, cv=3, method="sigmoid")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate.hog_svm", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset path(s), comma-separated")
    p.add_argument("--preset", default="oct_band_192")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--c", type=float, default=0.01, help="SVM C")
    p.add_argument("--out", type=Path, default=Path("runs/oct-hog-svm"))
    p.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    args = p.parse_args(argv)
    setup_logging()
    table = read_tables(args.data, task="oct")
    spec = get_preset(args.preset)
    images = prepare_all(table, spec, cache_dir=args.cache_dir).numpy()[:, 0]
    t0 = time.perf_counter()
    feats = np.stack([hog_features(im) for im in tqdm(images, desc="hog", unit="img", mininterval=2)])
    feat_ms = (time.perf_counter() - t0) / len(images) * 1000
    logger.info("HOG: %d features per image, %.1f ms/image", feats.shape[1], feat_ms)
    oof = np.full((len(table), len(table.class_names)), np.nan)
    t0 = time.perf_counter()
    for i, (tr, te) in enumerate(grouped_folds(table, args.folds, seed=args.seed)):
        clf = make_classifier(args.c, args.seed).fit(feats[tr], table.labels[tr])
        oof[te] = clf.predict_proba(feats[te])
        logger.info("fold %d: balanced accuracy %.3f", i, (oof[te].argmax(1) == table.labels[te]).mean())
    fit_s = time.perf_counter() - t0
    metrics = compute_metrics(oof, table.labels, table.class_names, groups=table.groups, n_bootstrap=1000)
    metrics.update(
        split="out-of-fold",
        evaluation=f"{args.folds}-fold patient-grouped CV",
        train_seconds=fit_s,
        serve_ms_per_image=feat_ms,
    )
    write_evaluation(
        args.out,
        metrics,
        oof,
        table.labels,
        table.class_names,
        title=f"Cross-validation of HOG + linear SVM ({args.preset})",
        context={"data": args.data, "features": f"multiscale HOG {SCALES}, {feats.shape[1]} dims"},
        paths=list(table.paths),
    )
    logger.info("CV balanced accuracy %.3f %s", metrics["balanced_accuracy"], metrics.get("balanced_accuracy_ci95"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
