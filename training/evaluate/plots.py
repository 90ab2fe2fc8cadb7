"""Evaluation and training plots (matplotlib, headless ``Agg`` backend, PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers/CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, roc_curve  # noqa: E402


def confusion_matrix_png(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path) -> Path:
    """Heat map with counts of a ``(K, K)`` confusion matrix (rows: true class, columns: predicted)."""
    cm_arr = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ConfusionMatrixDisplay(cm_arr, display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d", xticks_rotation=30
    )
    ax.set_title(f"Confusion matrix (n={int(cm_arr.sum())})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_png(
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    extra: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    aucs: dict[str, Any] | None = None,
) -> Path:
    """One-vs-rest ROC curve per class (classes absent from ``labels`` are skipped).

    ``extra`` maps a name to ``(y_binary (N,), score (N,))`` for derived binary tasks such
    as referable DR, drawn dashed on a second panel.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    panels = 2 if extra else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 5))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    for i, name in enumerate(class_names):
        y = (labels == i).astype(int)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, probs[:, i])
            auc = (aucs or {}).get(name)
            ax.plot(fpr, tpr, label=f"{name}" + (f" (AUC {auc:.3f})" if auc is not None else ""))
    ax.set_title("One-vs-rest ROC")
    for name, (y, score) in (extra or {}).items():
        if 0 < np.sum(y) < len(y):
            fpr, tpr, _ = roc_curve(y, score)
            auc = (aucs or {}).get(name)
            axes[1].plot(fpr, tpr, "--", label=name + (f" (AUC {auc:.3f})" if auc is not None else ""))
    if extra:
        axes[1].set_title("Derived binary tasks")
    for a in axes:
        a.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        a.set_xlabel("1 - specificity (FPR)")
        a.set_ylabel("sensitivity (TPR)")
        a.set_xlim(0, 1)
        a.set_ylim(0, 1.01)
        if a.get_legend_handles_labels()[0]:
            a.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves_png(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Loss (train/val) and val balanced accuracy per epoch from ``history.csv`` rows."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [int(r["epoch"]) for r in history]

    def col(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else np.nan for r in history]

    ax1.plot(ep, col("train_loss"), "o-", label="train")
    ax1.plot(ep, col("val_loss"), "o-", label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    ax2.plot(ep, col("val_balanced_accuracy"), "o-", label="val balanced acc")
    ax2.plot(ep, col("val_accuracy"), "o-", label="val acc")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
