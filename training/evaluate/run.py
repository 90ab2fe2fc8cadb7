"""Evaluate a checkpoint on a dataset: metrics with bootstrap CIs, report and plots (``python -m training.evaluate``).

The model, its preprocessing and its temperature come from the checkpoint alone; which rows
are scored is :func:`training.evaluate.rows.resolve_rows`'s. Writes ``OUT/metrics.json``,
``OUT/report.md``, ``OUT/confusion_matrix.png``, ``OUT/roc.png`` and ``OUT/predictions.csv``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retina import checkpoint
from retina.runtime import resolve_device
from training.config import DataConfig
from training.data.loaders import TensorBatches
from training.data.pixels import prepare_all
from training.data.tables import DatasetError, read_tables
from training.evaluate.metrics import compute_metrics
from training.evaluate.predict import predict_probs, set_threads
from training.evaluate.report import write_evaluation
from training.evaluate.rows import RAW_LONG_SIDE, raw_mask, resolve_rows

logger = logging.getLogger("training.evaluate")


@dataclass(frozen=True)
class EvalRequest:
    """What to score where: the flags of ``python -m training.evaluate``."""

    checkpoint: str
    data: str
    out: str
    split: str | None = None  # test | val | train | all; None = test on the training data, else all
    subsets: tuple[str, ...] = ()  # "raw": also report raw photos only
    part: int | None = None  # with data "a,b": only the K-th dataset's rows of the recomputed split
    format: str | None = None  # dataset format; None = the training one, else auto
    n_bootstrap: int = 1000
    device: str = "auto"
    batch_size: int = 128
    threads: int = 0
    cache_dir: str | None = None  # prepared-image cache; None = the training config's


def evaluate_checkpoint(args: EvalRequest) -> dict[str, Any]:
    """Score ``args.checkpoint`` on ``args.data``; writes the files of :func:`write_evaluation`, returns the metrics."""
    set_threads(args.threads)
    device = resolve_device(args.device)
    model, meta = checkpoint.load(args.checkpoint, device=device)
    d = DataConfig.from_saved((meta.config or {}).get("data"))
    fmt = args.format or d.format or "auto"
    scheme = meta.label_scheme or d.label_scheme
    full = read_tables(args.data, fmt, label_scheme=scheme, task=meta.task, patients=d.patients)
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
    cache = args.cache_dir if args.cache_dir is not None else d.cache_dir
    images = prepare_all(table, spec, cache_dir=Path(cache) if cache else None)[torch.as_tensor(idx)]
    labels = table.labels[idx]
    t = meta.temperature
    probs, _ = predict_probs(model, TensorBatches(images, labels, args.batch_size), device, spec, temperature=t)
    groups = table.groups[idx]
    metrics = compute_metrics(probs, labels, meta.class_names, groups=groups, n_bootstrap=args.n_bootstrap)
    subsets: dict[str, Any] = {}
    for name in args.subsets:
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
