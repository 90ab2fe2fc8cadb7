"""Pure tables of the UI (pandas, no Streamlit): model figures, the batch results table, the exam's image rows.

Every value is what the backend sent, arranged in rows; nothing here recomputes a figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from frontend.answers import Prediction, VolumeResult
from frontend.errors import BackendError
from frontend.exam_answer import ExamImage
from frontend.model_info import AUTO_MODEL, ModelInfo
from frontend.text import is_number, refusal_text
from frontend.uploads import Upload

# The few numbers a reader wants first, looked up in each evaluation split of the checkpoint's
# metrics (training/evaluate/metrics.py layout: {"val": {...}, "test": {...}}); dotted = nested.
HEADLINE_METRICS = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "Macro F1"),
    ("roc_auc.macro", "ROC AUC (macro)"),
    ("referable.roc_auc", "Referable DR AUC"),
    ("ece", "Calibration error (ECE)"),
)
SPLIT_NAMES = {
    "cv": "Cross-validation",
    "test": "Test",
    "val": "Validation",
    "validation": "Validation",
    "holdout": "Hold-out",
}
# results_table's referral cell of an image the backend refused (not a retinal image, wrong modality...).
REFUSED = "refused"


# ----------------------------------------------------------------------------- model figures


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric dicts as ``{"val.accuracy": 0.91, ...}``; keeps scalars, drops lists (matrices, CIs)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, bool) or value is None:
            out[name] = str(value)
        elif isinstance(value, int | float | str):
            out[name] = value
    return out


def metrics_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Every scalar metric as two string columns (metric, value); numbers rounded to 3 decimals."""
    flat = flatten_metrics(metrics)
    values = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in flat.values()]
    return pd.DataFrame({"metric": list(flat), "value": values})


def _lookup(d: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def _format_metric(split: Mapping[str, Any], key: str) -> str | None:
    value = _lookup(split, key)
    if not is_number(value):
        return None
    text = f"{value:.3f}"
    ci = _lookup(split, f"{key}_ci95")
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(is_number(c) for c in ci):
        text += f" ({ci[0]:.2f}-{ci[1]:.2f})"
    return text


def headline_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """``[(split title, table of metric/value)]``: CV, then test, then validation; 95% CIs in brackets.

    Falls back to every scalar under one "Metrics" title when the layout is not recognised.
    """
    splits = [k for k in ("cv", "test", "val", "validation", "holdout") if isinstance(metrics.get(k), Mapping)]
    if "cv" in splits:
        # A cross-validated model's own validation split is the handful of images left over for the
        # final fit; its numbers are noise beside the out-of-fold ones.
        splits = [k for k in splits if k not in ("val", "validation")]
    out = []
    for key in splits or [""]:
        split = metrics[key] if key else metrics
        rows = [(label, text) for k, label in HEADLINE_METRICS if (text := _format_metric(split, k)) is not None]
        if not rows:
            continue
        title = SPLIT_NAMES.get(key, "Metrics")
        if isinstance(split.get("n"), int):
            patients = split.get("n_patients")
            title += f" (n={split['n']}" + (f", {patients} patients)" if isinstance(patients, int) else ")")
        out.append((title, pd.DataFrame(rows, columns=["metric", "value"])))
    if not out:
        frame = metrics_frame(metrics)
        if len(frame):
            out.append(("Metrics", frame))
    return out


def figure_tables(model: ModelInfo) -> list[tuple[str, str, str, pd.DataFrame]]:
    """``[(heading, kind, title, table of metric/value)]``, one per evaluation set, in the model card's order.

    The values are the backend's ``figures[].text``, printed as the model card and the PDF print them
    (``0.921 [0.900, 0.940]``), so the UI never rounds a figure differently. An older backend without
    ``figures``: the training-run ``metrics`` through :func:`headline_metrics` (kind ``""``).
    """
    out = []
    for ev in model.figures:
        rows = [
            (str(f.get("label") or f.get("key")), str(f.get("text")))
            for f in ev.get("figures") or ()
            if isinstance(f, Mapping) and f.get("text") is not None
        ]
        if rows:
            heading = str(ev.get("heading") or ev.get("name") or "Metrics")
            frame = pd.DataFrame(rows, columns=["metric", "value"])
            out.append((heading, str(ev.get("kind") or ""), str(ev.get("title") or ""), frame))
    if not out:
        out = [(title, "", "", frame) for title, frame in headline_metrics(model.metrics)]
    return out


# ----------------------------------------------------------------------------- results of a batch


def results_table(
    model: ModelInfo, uploads: Sequence[Upload], results: Sequence[Prediction | VolumeResult | BackendError]
) -> pd.DataFrame:
    """One row per upload.

    Columns: filename, model (auto-detect only: which model answered), label, confidence,
    referral (level code; ``refused`` for an image the backend did not score), gradable, ``p_<class>``
    for every class then the derived ones, error (only when some image failed: why, in plain words).
    An ungradable image has no label and no probabilities. :func:`results_display_order` puts the
    error beside the file name on screen.
    """
    auto = model.id == AUTO_MODEL
    head = ["filename", *(["model"] if auto else []), "label", "confidence", "referral", "gradable"]
    probs: list[str] = [f"p_{c}" for c in model.classes]
    rows = []
    for up, res in zip(uploads, results, strict=True):
        row: dict[str, Any] = dict.fromkeys(head) | {"filename": up.name, "error": None}
        if isinstance(res, VolumeResult):
            res = res.prediction  # the volume's own answer
        if isinstance(res, BackendError):
            # Not scored: say so in the referral column and why in the error column (plain words), rather
            # than leave every cell empty ("None").
            row["referral"] = REFUSED
            row["error"] = refusal_text(res, model)[0]
        else:
            level = res.referral.level if res.referral else ("ungradable" if not res.gradable else None)
            row |= {"label": res.label, "confidence": res.confidence, "referral": level, "gradable": res.gradable}
            if auto:
                row["model"] = res.model
            p = {f"p_{c}": v for c, v in (res.probabilities or {}).items()}
            p |= {f"p_{k}": v for k, v in (res.derived or {}).items()}
            # Auto-detect mixes models: the union of their classes, in order of first appearance.
            probs += [c for c in p if c not in probs]
            row |= p
        rows.append(row)
    columns = head + probs + (["error"] if any(r["error"] is not None for r in rows) else [])
    return pd.DataFrame(rows, columns=columns)


def results_display_order(table: pd.DataFrame) -> list[str]:
    """The on-screen column order of :func:`results_table`: the refusal reason right after the file name,
    so a refused row reads "why" before a run of empty cells (the CSV keeps the documented order)."""
    cols = table.columns.tolist()
    if "error" not in cols:
        return cols
    rest = [c for c in cols if c not in ("filename", "error")]
    return ["filename", "error", *rest]


# ----------------------------------------------------------------------------- exams


def image_rows(images: Sequence[ExamImage]) -> list[dict[str, Any]]:
    """One table row per uploaded file of an exam, in upload order; ``referral`` is the level code, or the
    refusal's error code for a file the backend did not score."""
    rows = []
    for img in images:
        referral = img.result.referral if img.result is not None else None
        rows.append(
            {
                "#": img.index,
                "file": img.filename or "",
                "eye": img.eye,
                "eye from": img.laterality_source,
                "kind": img.kind,
                "gradable": img.gradable,
                "label": (img.result.label if img.result is not None else None) or "",
                "referral": (referral.level if referral else "") or (img.error.error if img.error else ""),
            }
        )
    return rows
