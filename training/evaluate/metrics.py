"""Classification metrics with patient-level bootstrap intervals (scikit-learn underneath).

:func:`compute_metrics` returns one plain-typed dict (JSON- and checkpoint-safe: NaN
becomes ``None``) used by ``training.evaluate``, ``training.cv`` and the checkpoints'
``metrics`` block, so every number a model card quotes is computed the same way.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sklearn
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from retina.labels import DR_GRADES, p_grade_at_least
from retina.serialize import to_plain
from training.evaluate.calibration import ece

CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


@contextlib.contextmanager
def quiet_sklearn() -> Iterator[None]:
    """Silence sklearn's warnings about classes absent from a (resampled) subset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _scalar_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }


def _groups_index(groups: np.ndarray | None, n: int) -> list[np.ndarray]:
    """Row indices per resampling unit: per patient when ``groups`` is given, else per image."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def bootstrap_ci(
    fn: Any,
    n: int,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[list[float | None]] | list[float | None]:
    """Percentile bootstrap CI of ``fn(idx) -> float | tuple[float, ...]`` over rows ``0..n-1``.

    Resamples whole patients (cluster bootstrap) when ``groups`` is given, because images of
    one patient are correlated; resamples images otherwise. Returns ``[lo, hi]`` (or a list
    of them when ``fn`` returns a tuple); ``None`` where a value is undefined.
    """
    units = _groups_index(groups, n)
    rng = np.random.default_rng(seed)
    values = []
    # Inputs were validated once by the caller; skipping sklearn's per-call validation makes
    # 1000 resamples several times faster without changing any value.
    with quiet_sklearn(), sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for _ in range(n_boot):
            pick = rng.integers(0, len(units), len(units))
            idx = np.concatenate([units[i] for i in pick])
            values.append(fn(idx))
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    cis = []
    for col in arr.T:
        col = col[np.isfinite(col)]
        if len(col) == 0:
            cis.append([None, None])
        else:
            lo, hi = np.percentile(col, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            cis.append([float(lo), float(hi)])
    return cis if len(cis) > 1 else cis[0]


def _binary_auc(y_bin: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present (undefined, not 0.5)."""
    if len(np.unique(y_bin)) < 2:
        return float("nan")
    return float(roc_auc_score(y_bin, score))


def sensitivity_at_specificity(y_bin: np.ndarray, score: np.ndarray, specificity: float = 0.9) -> dict[str, Any]:
    """The highest sensitivity whose ROC point has specificity >= ``specificity``, and its threshold."""
    if len(np.unique(y_bin)) < 2:
        return {"sensitivity": float("nan"), "specificity": float("nan"), "threshold": float("nan")}
    fpr, tpr, thr = roc_curve(y_bin, score)
    ok = np.flatnonzero(fpr <= 1 - specificity + 1e-12)
    best = ok[np.argmax(tpr[ok])]
    return {"sensitivity": float(tpr[best]), "specificity": float(1 - fpr[best]), "threshold": float(thr[best])}


def derived_binary(
    probs: np.ndarray, labels: np.ndarray, min_grade: int, groups: np.ndarray | None, n_boot: int, seed: int
) -> dict[str, Any]:
    """Metrics of ``P(grade >= min_grade)`` (sum of grade probabilities) vs the true grade."""
    y_bin = (labels >= min_grade).astype(int)
    score = p_grade_at_least(probs, min_grade)
    auc = _binary_auc(y_bin, score)
    out: dict[str, Any] = {
        "roc_auc": auc,
        "n_positive": int(y_bin.sum()),
        "n_negative": int(len(y_bin) - y_bin.sum()),
        "definition": f"P(grade >= {min_grade}) = sum of grade probabilities {min_grade}..4",
    }
    if n_boot and np.isfinite(auc):
        out["roc_auc_ci95"] = bootstrap_ci(
            lambda i: _binary_auc(y_bin[i], score[i]), len(y_bin), groups, n_boot=n_boot, seed=seed
        )
    at90 = sensitivity_at_specificity(y_bin, score, 0.9)
    out["sensitivity_at_90_specificity"] = at90["sensitivity"]
    out["specificity_at_threshold"] = at90["specificity"]
    out["threshold"] = at90["threshold"]
    return out


def _per_class(probs: np.ndarray, labels: np.ndarray, pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """``per_class`` (precision, recall, F1, support, sensitivity, specificity), ``confusion_matrix``
    and one-vs-rest ``roc_auc`` for probabilities ``(N, K)``, labels and predictions ``(N,)``."""
    all_labels = list(range(len(class_names)))
    with quiet_sklearn():
        prec, rec, f1, support = precision_recall_fscore_support(labels, pred, labels=all_labels, zero_division=0)
        mcm = multilabel_confusion_matrix(labels, pred, labels=all_labels)  # (K, 2, 2): [[tn, fp], [fn, tp]]
    per_class = {}
    aucs = {}
    for i, name in enumerate(class_names):
        tn, fp = mcm[i, 0]
        fn, tp = mcm[i, 1]
        per_class[name] = {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
            "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        }
        aucs[name] = _binary_auc((labels == i).astype(int), probs[:, i])
    defined = [v for v in aucs.values() if np.isfinite(v)]
    return {
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, pred, labels=all_labels).tolist(),
        "roc_auc": {
            "per_class": aucs,
            "macro": float(np.mean(defined)) if defined else float("nan"),
            "n_classes_defined": len(defined),
        },
    }


def compute_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    groups: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All evaluation metrics for probabilities ``(N, K)`` and true labels ``(N,)``.

    Args:
        probs: class probabilities in ``[0, 1]``, rows summing to 1 (after temperature).
        labels: true class indices ``0..K-1``.
        class_names: ``K`` names in logit order.
        groups: ``(N,)`` patient ids; bootstrap CIs then resample patients.
        n_bootstrap: resamples for the 95% CIs (0 = no CIs).
        seed: bootstrap seed (fixed, so reports are reproducible).

    Returns a plain-typed dict with ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
    ``weighted_f1``, ``per_class``, ``confusion_matrix``, ``roc_auc``, ``*_ci95``, ``ece``,
    ``n``, ``n_patients`` and, for 5-grade DR models, ``referable`` and ``any_dr``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(class_names)
    if probs.shape != (len(labels), k):
        raise ValueError(f"probs must be (N={len(labels)}, K={k}), got {probs.shape}")
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    pred = probs.argmax(axis=1)
    with quiet_sklearn():
        out: dict[str, Any] = _scalar_metrics(labels, pred)
        out["weighted_f1"] = float(f1_score(labels, pred, average="weighted", zero_division=0))
    out.update(_per_class(probs, labels, pred, class_names))
    if n_bootstrap:
        cis = bootstrap_ci(
            lambda i: tuple(_scalar_metrics(labels[i], pred[i]).values()),
            len(labels),
            groups,
            n_boot=n_bootstrap,
            seed=seed,
        )
        for name, ci in zip(CI_METRICS, cis, strict=True):
            out[f"{name}_ci95"] = ci
    out["bootstrap"] = {
        "resamples": int(n_bootstrap),
        "unit": "patient" if groups is not None else "image",
        "seed": int(seed),
        "method": "percentile",
    }
    out["ece"] = ece(probs, labels)
    out["n"] = int(len(labels))
    out["n_patients"] = int(len(np.unique(np.asarray(groups).astype(str)))) if groups is not None else None
    out["class_names"] = list(class_names)
    if tuple(class_names) == DR_GRADES:
        out["referable"] = derived_binary(probs, labels, 2, groups, n_bootstrap, seed)
        out["any_dr"] = derived_binary(probs, labels, 1, groups, 0, seed)
    return to_plain(out)
