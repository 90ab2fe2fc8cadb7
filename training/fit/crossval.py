"""Patient-grouped stratified K-fold cross-validation, and optionally a final model (``python -m training.cv``).

For small datasets a single held-out test split is too noisy to quote; CV scores every
image exactly once by a model that never saw its patient:

* folds from :func:`training.data.splits.grouped_folds` (no patient in two folds, classes stratified);
* per fold, an inner patient-disjoint validation split of the training folds drives early
  stopping and the temperature; the held-out fold is predicted (temperature-scaled);
* the out-of-fold predictions are scored together: ``OUT/metrics.json`` (same keys as
  ``training.evaluate``, bootstrap CIs over patients, plus per-fold numbers),
  ``OUT/report.md``, ``OUT/confusion_matrix.png``, ``OUT/roc.png``;
* ``final=True`` trains one model on all the data (inner validation split for early stopping
  and calibration) and saves it as ``OUT/final/best.pt`` with the CV metrics under
  ``metrics.cv`` and ``data.evaluation = "5-fold patient-grouped CV"``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from retina.serialize import to_plain
from training.config import ConfigError, TrainConfig
from training.data.bundle import DataBundle, prepare_data
from training.data.splits import grouped_folds, inner_val
from training.data.tables import ImageTable
from training.evaluate.metrics import compute_metrics, quiet_sklearn
from training.evaluate.report import write_evaluation
from training.fit.run import FitResult, fit

logger = logging.getLogger("training.cv")


def _fold_row(i: int, table: ImageTable, held: np.ndarray, res: FitResult) -> dict[str, Any]:
    """Scores of one fold's held-out predictions (temperature-scaled, argmax)."""
    assert res.test_probs is not None
    y, p = table.labels[held], res.test_probs.argmax(1)
    with quiet_sklearn():
        fold_bal = float(balanced_accuracy_score(y, p))
    return {
        "fold": i,
        "n": int(len(held)),
        "n_patients": int(len(set(table.groups[held]))),
        "accuracy": float(accuracy_score(y, p)),
        "balanced_accuracy": fold_bal,
        "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
        "best_epoch": res.best_epoch,
        "temperature": float(res.calibration.get("temperature", 1.0)),
    }


def cross_fit(
    cfg: TrainConfig, bundle: DataBundle, folds: int, out: Path, evaluation: str
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One :func:`fit` per fold; returns the out-of-fold probabilities ``(N, K)`` and per-fold scores."""
    table = bundle.table
    seed = cfg.data.seed
    val_frac = cfg.data.val_frac or 0.15
    oof = np.full((len(table), len(table.class_names)), np.nan)
    per_fold = []
    for i, (tr_pool, held) in enumerate(grouped_folds(table, folds, seed=seed)):
        tr, va = inner_val(table, tr_pool, val_frac, seed + i + 1)
        logger.info(
            "fold %d/%d: train %d images (%d patients), inner val %d (%d), held-out %d (%d)",
            i + 1,
            folds,
            len(tr),
            len(set(table.groups[tr])),
            len(va),
            len(set(table.groups[va])),
            len(held),
            len(set(table.groups[held])),
        )
        # CIs come from the pooled out-of-fold predictions, not from each fold.
        c = replace(cfg, n_bootstrap=0, out=str(out / f"fold_{i}"))
        res = fit(
            c,
            bundle,
            out / f"fold_{i}",
            train_idx=tr,
            val_idx=va,
            test_idx=held,
            keep_last=False,
            data_extra={"evaluation": f"{evaluation}, fold {i}", "fold": i, "folds": folds},
        )
        assert res.test_probs is not None
        oof[held] = res.test_probs
        per_fold.append(_fold_row(i, table, held, res))
    if np.isnan(oof).any():
        raise RuntimeError("some images were never held out; grouped_folds must cover every row once")
    return oof, per_fold


def _fold_summary(per_fold: list[dict[str, Any]]) -> dict[str, float]:
    names = ("accuracy", "balanced_accuracy", "macro_f1")
    return {f"{m}_fold_mean": float(np.mean([f[m] for f in per_fold])) for m in names} | {
        f"{m}_fold_std": float(np.std([f[m] for f in per_fold])) for m in names
    }


def _write_report(
    cfg: TrainConfig, table: ImageTable, metrics: dict[str, Any], oof: np.ndarray, out: Path, evaluation: str
) -> None:
    """``OUT/metrics.json``, ``report.md`` and the plots of the out-of-fold predictions."""
    per_fold = metrics["folds"]
    context = {
        "config": cfg.name,
        "model": f"{cfg.model.arch} {cfg.model.args}",
        "data": f"`{cfg.data.path}` ({table.source}, {len(table)} images, {len(set(table.groups))} patients)",
        "evaluation": f"{evaluation}: every image predicted once by a model that never saw its patient",
        "per-fold balanced accuracy": ", ".join(f"{f['balanced_accuracy']:.3f}" for f in per_fold),
    }
    write_evaluation(
        out,
        metrics,
        oof,
        table.labels,
        table.class_names,
        title=f"Cross-validation of {cfg.name}",
        context=context,
        paths=[p or str(j) for j, p in enumerate(table.paths)],
    )


def fit_final(
    cfg: TrainConfig, bundle: DataBundle, metrics: dict[str, Any], folds: int, out: Path, evaluation: str
) -> Path | None:
    """One model on all the data (inner validation split), carrying the CV metrics; returns its ``best.pt``."""
    table = bundle.table
    tr, va = inner_val(table, np.arange(len(table)), cfg.data.val_frac or 0.15, cfg.data.seed)
    c = replace(cfg, out=str(out / "final"))
    cv_block = {k_: v for k_, v in metrics.items() if k_ not in ("checkpoint",)}
    res = fit(
        c,
        bundle,
        out / "final",
        train_idx=tr,
        val_idx=va,
        test_idx=None,
        data_extra={
            "evaluation": evaluation,
            "splits": {
                "train": {"images": int(len(tr)), "patients": int(len(set(table.groups[tr])))},
                "val": {"images": int(len(va)), "patients": int(len(set(table.groups[va])))},
                "test": {"images": 0, "patients": 0},
            },
            "cv_folds": folds,
        },
        extra_metrics={"cv": to_plain(cv_block)},
    )
    logger.info("final model on all data: %s", res.best_path)
    return res.best_path


def cross_validate(cfg: TrainConfig, folds: int, out: Path, *, final: bool = False) -> dict[str, Any]:
    """Cross-validate ``cfg``; returns the out-of-fold metrics (also written to ``out``)."""
    if cfg.simclr is not None:
        raise ConfigError("training.cv runs supervised configs; SimCLR is cross-validated by its fine-tuning only")
    bundle = prepare_data(cfg, splits=False)
    table = bundle.table
    evaluation = f"{folds}-fold patient-grouped CV"
    oof, per_fold = cross_fit(cfg, bundle, folds, out, evaluation)
    metrics = compute_metrics(oof, table.labels, table.class_names, groups=table.groups, n_bootstrap=cfg.n_bootstrap)
    metrics.update(
        split="out-of-fold",
        evaluation=evaluation,
        folds=per_fold,
        fold_summary=_fold_summary(per_fold),
        data_fingerprint=bundle.meta["fingerprint"],
        n_folds=folds,
        seed=cfg.data.seed,
    )
    _write_report(cfg, table, metrics, oof, out, evaluation)
    logger.info(
        "CV (%d folds): accuracy %.3f %s, balanced accuracy %.3f %s, macro F1 %.3f",
        folds,
        metrics["accuracy"],
        metrics.get("accuracy_ci95"),
        metrics["balanced_accuracy"],
        metrics.get("balanced_accuracy_ci95"),
        metrics["macro_f1"],
    )
    if final:
        metrics["final_checkpoint"] = str(fit_final(cfg, bundle, metrics, folds, out, evaluation))
    return metrics
