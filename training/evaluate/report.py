"""What an evaluation writes: ``metrics.json``, ``report.md``, the plots and ``predictions.csv``.

Shared by ``python -m training.evaluate``, ``python -m training.cv`` and the HOG + SVM anchor,
so that every evaluation reads the same.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retina.formatting import fmt_ci, fmt_number
from retina.labels import DR_GRADES, p_grade_at_least
from retina.serialize import to_plain
from training.evaluate.plots import confusion_matrix_png, roc_png


def write_evaluation(
    out: Path,
    metrics: dict[str, Any],
    probs: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    title: str,
    context: dict[str, Any],
    paths: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``confusion_matrix.png``, ``roc.png``, ``predictions.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": out / "metrics.json",
        "report": out / "report.md",
        "confusion_matrix": out / "confusion_matrix.png",
        "roc": out / "roc.png",
        "predictions": out / "predictions.csv",
    }
    with open(files["metrics"], "w") as f:
        json.dump(to_plain(metrics), f, indent=2, allow_nan=False)
    confusion_matrix_png(metrics["confusion_matrix"], class_names, files["confusion_matrix"])
    extra, aucs = None, dict(metrics["roc_auc"]["per_class"])
    if tuple(class_names) == DR_GRADES:
        extra = {
            "referable (grade>=2)": ((labels >= 2).astype(int), p_grade_at_least(probs, 2)),
            "any DR (grade>=1)": ((labels >= 1).astype(int), p_grade_at_least(probs, 1)),
        }
        aucs["referable (grade>=2)"] = metrics["referable"]["roc_auc"]
        aucs["any DR (grade>=1)"] = metrics["any_dr"]["roc_auc"]
    roc_png(probs, labels, class_names, files["roc"], extra=extra, aucs=aucs)
    with open(files["predictions"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "pred", *[f"p_{c}" for c in class_names]])
        for i in range(len(labels)):
            w.writerow(
                [
                    paths[i] if paths else i,
                    class_names[labels[i]],
                    class_names[int(probs[i].argmax())],
                    *[f"{p:.5f}" for p in probs[i]],
                ]
            )
    files["report"].write_text(render_report(metrics, class_names, title=title, context=context))
    return files


def _summary_rows(m: dict[str, Any]) -> list[str]:
    rows = [
        f"| accuracy | {fmt_ci(m['accuracy'], m.get('accuracy_ci95'), pct=True, style='to')} |",
        "| balanced accuracy | "
        f"{fmt_ci(m['balanced_accuracy'], m.get('balanced_accuracy_ci95'), pct=True, style='to')} |",
        f"| macro F1 | {fmt_ci(m['macro_f1'], m.get('macro_f1_ci95'), style='to')} |",
        f"| weighted F1 | {fmt_number(m['weighted_f1'])} |",
        f"| macro ROC AUC (one-vs-rest) | {fmt_number(m['roc_auc']['macro'])} |",
        f"| ECE (15 bins) | {fmt_number(m['ece'])} |",
        f"| images / patients | {m['n']} / {m['n_patients']} |",
    ]
    for key, name in (("referable", "referable DR (grade>=2) ROC AUC"), ("any_dr", "any DR (grade>=1) ROC AUC")):
        if key in m:
            rows.append(f"| {name} | {fmt_ci(m[key]['roc_auc'], m[key].get('roc_auc_ci95'), style='to')} |")
    if "referable" in m:
        r = m["referable"]
        rows.append(
            f"| referable: sensitivity at 90% specificity | {fmt_number(r['sensitivity_at_90_specificity'], True)} "
            f"(threshold {fmt_number(r['threshold'])}) |"
        )
    return rows


def render_report(metrics: dict[str, Any], class_names: Sequence[str], *, title: str, context: dict[str, Any]) -> str:
    """Markdown report: context, headline metrics with 95% CIs, per-class table, confusion matrix, plots."""
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in context.items()]
    lines += [
        "",
        "## Metrics",
        "",
        "95% intervals: percentile bootstrap, "
        f"{metrics['bootstrap']['resamples']} resamples of {metrics['bootstrap']['unit']}s.",
        "",
        "| metric | value |",
        "|---|---|",
        *_summary_rows(metrics),
    ]
    lines += [
        "",
        "## Per class",
        "",
        "| class | precision | recall (sensitivity) | specificity | F1 | ROC AUC | support |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in class_names:
        pc = metrics["per_class"][c]
        lines.append(
            f"| {c} | {fmt_number(pc['precision'])} | {fmt_number(pc['sensitivity'])} | "
            f"{fmt_number(pc['specificity'])} | "
            f"{fmt_number(pc['f1'])} | {fmt_number(metrics['roc_auc']['per_class'][c])} | {pc['support']} |"
        )
    lines += [
        "",
        "## Confusion matrix (rows: true, columns: predicted)",
        "",
        "| | " + " | ".join(class_names) + " |",
        "|---" * (len(class_names) + 1) + "|",
    ]
    for c, row in zip(class_names, metrics["confusion_matrix"], strict=True):
        lines.append(f"| **{c}** | " + " | ".join(str(v) for v in row) + " |")
    for name, sub in (metrics.get("subsets") or {}).items():
        lines += ["", f"## Subset: {name} ({sub.get('description', '')})", ""]
        if sub.get("n", 0) == 0:
            lines.append("No images in this subset.")
        else:
            lines += ["| metric | value |", "|---|---|", *_summary_rows(sub)]
    lines += ["", "## Plots", "", "![confusion matrix](confusion_matrix.png)", "", "![ROC curves](roc.png)", ""]
    return "\n".join(lines)
