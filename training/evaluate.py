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
import csv
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retina import checkpoint
from retina.formatting import fmt_ci, fmt_number
from retina.labels import DR_GRADES, p_grade_at_least
from retina.runtime import resolve_device
from retina.serialize import to_plain
from training import config as config_mod
from training.cli import run_cli
from training.data import select_rows
from training.datasets import DatasetError, ImageTable, load_prepared, read_tables, split_indices
from training.engine import TensorBatches, evaluate, set_threads
from training.metrics import compute_metrics
from training.plots import confusion_matrix_png, roc_png

logger = logging.getLogger("training.evaluate")

RAW_LONG_SIDE = 300  # fundus "raw photo" = long side > 300 px (the publisher's crops are 256 px)


def raw_mask(table: ImageTable, idx: np.ndarray) -> np.ndarray:
    """``(len(idx),)`` bool: images whose original long side exceeds :data:`RAW_LONG_SIDE`."""
    return table.sizes[idx].max(axis=1) > RAW_LONG_SIDE


def resolve_rows(
    meta: checkpoint.CheckpointMeta, table: ImageTable, split: str | None
) -> tuple[ImageTable, np.ndarray, str, dict[str, Any]]:
    """Which rows to score: ``(table, idx, split, info)``; see the module docstring."""
    cfg = meta.config or {}
    d = {**config_mod.DEFAULTS["data"], **cfg.get("data", {})}
    same = bool(meta.data.get("fingerprint")) and table.fingerprint() == meta.data["fingerprint"]
    cv_model = str(meta.data.get("evaluation", "")).lower().find("cv") >= 0
    info: dict[str, Any] = {"fingerprint_matches_training": same}
    if same and cv_model:
        logger.warning(
            "this model was trained on all of this dataset (CV final model); its CV metrics are in the checkpoint"
        )
    if split is None:
        split = "test" if same and not cv_model else "all"
    if same:
        table = select_rows({"data": d}, table)  # the same patient-level cap as training
    if split == "all":
        return table, np.arange(len(table)), split, info
    if not same:
        logger.warning(
            "dataset differs from the training data: split %r is a fresh patient-disjoint split of it", split
        )
    parts = split_indices(table, val_frac=d["val_frac"], test_frac=d["test_frac"], seed=d["seed"])
    if split not in parts or len(parts[split]) == 0:
        raise DatasetError(f"split {split!r} is empty for {table.root}")
    info["split_source"] = "training split recomputed" if same else "fresh split of a different dataset"
    return table, parts[split], split, info


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    set_threads(args.threads)
    device = resolve_device(args.device)
    model, meta = checkpoint.load(args.checkpoint, device=device)
    d = {**config_mod.DEFAULTS["data"], **(meta.config or {}).get("data", {})}
    fmt = args.format or d["format"] or "auto"
    scheme = meta.label_scheme or d["label_scheme"]
    full = read_tables(args.data, fmt, label_scheme=scheme, task=meta.task, patients=d["patients"])
    if tuple(full.class_names) != tuple(meta.class_names):
        raise DatasetError(f"dataset classes {full.class_names} differ from the model's {meta.class_names}")
    table, idx, split, info = resolve_rows(meta, full, args.split)
    if args.part is not None:
        # A model trained on several datasets: its split recomputed on all of them (so the
        # fingerprint matches), then one dataset's rows, e.g. IDRiD's held-out part.
        if table.parts is None or args.part not in set(table.parts.tolist()):
            raise DatasetError(f"--part {args.part}: --data {args.data} does not have that many datasets")
        idx = idx[table.parts[idx] == args.part]
        info["part"] = str(args.data).split(",")[args.part]
    spec = meta.preprocess
    cache = args.cache_dir if args.cache_dir is not None else d["cache_dir"]
    images = load_prepared(table, np.arange(len(table)), spec, cache_dir=Path(cache) if cache else None)
    images = images[torch.as_tensor(idx)]
    labels = table.labels[idx]
    t = meta.temperature
    probs, _ = evaluate(model, TensorBatches(images, labels, args.batch_size), device, spec, temperature=t)
    groups = table.groups[idx]
    metrics = compute_metrics(probs, labels, meta.class_names, groups=groups, n_bootstrap=args.n_bootstrap)
    subsets: dict[str, Any] = {}
    for name in args.subset:
        m = raw_mask(table, idx)
        desc = f"raw photos, long side > {RAW_LONG_SIDE} px"
        if m.sum() == 0:
            subsets[name] = {"n": 0, "description": desc}
        else:
            sub = compute_metrics(probs[m], labels[m], meta.class_names, groups=groups[m], n_bootstrap=args.n_bootstrap)
            subsets[name] = {**sub, "description": desc}
        logger.info("subset %s: %d of %d images", name, int(m.sum()), len(m))
    metrics.update(
        split=split,
        subsets=subsets,
        temperature=t,
        checkpoint=str(args.checkpoint),
        data=str(args.data),
        data_fingerprint=full.fingerprint(),
        **info,
    )
    out = Path(args.out)
    context = {
        "checkpoint": f"`{args.checkpoint}` ({meta.arch}, v{meta.version}, {meta.task})",
        "data": f"`{args.data}` ({table.source}, {len(full)} images)",
        "split": f"{split} ({info.get('split_source', 'all images')})"
        + (f", rows of {info['part']} only" if "part" in info else ""),
        "images / patients": f"{metrics['n']} / {metrics['n_patients']}",
        "preprocess": f"{spec.size}px, {spec.channels} ch, square={spec.square}",
        "temperature": f"{t:.3f}",
        "label scheme": meta.label_scheme or "-",
    }
    write_evaluation(
        out,
        metrics,
        probs,
        labels,
        meta.class_names,
        title=f"Evaluation of {Path(args.checkpoint).name}",
        context=context,
        paths=[table.paths[i] or str(i) for i in idx],
    )
    logger.info(
        "%s split: accuracy %.3f %s, balanced accuracy %.3f, macro F1 %.3f, macro AUC %s, n=%d -> %s",
        split,
        metrics["accuracy"],
        metrics.get("accuracy_ci95"),
        metrics["balanced_accuracy"],
        metrics["macro_f1"],
        metrics["roc_auc"]["macro"],
        metrics["n"],
        out,
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv, logger)


if __name__ == "__main__":
    sys.exit(main())
