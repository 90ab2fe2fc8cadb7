"""One supervised training run: :func:`fit` trains with early stopping on the validation split, keeps the
best epoch, fits a temperature on the validation logits, scores val and test, and writes

    OUT/best.pt       the best epoch (retina.checkpoint format; fp16 when ``half``)
    OUT/last.pt       the last epoch plus optimizer/scheduler state for ``--resume``
    OUT/config.yaml   the resolved config (also inside both checkpoints)
    OUT/history.csv   one row per epoch, and OUT/training_curves.png
    OUT/train.log

:func:`training.fit.pipeline.train` (``python -m training.train``), :mod:`training.fit.crossval`
(``python -m training.cv``) and :mod:`training.fit.simclr` call it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retina import checkpoint
from retina.runtime import resolve_device
from retina.serialize import to_plain
from training import config as config_mod
from training.config import TrainConfig
from training.data.bundle import DataBundle
from training.evaluate.calibration import fit_temperature, softmax
from training.evaluate.metrics import compute_metrics
from training.evaluate.plots import training_curves_png
from training.evaluate.predict import set_threads
from training.fit import distributed
from training.fit.distributed import SINGLE, Dist
from training.fit.epochs import Progress, predict, resume_progress, run_epochs, write_history
from training.fit.loop import seed_everything
from training.fit.trainer import EvalData, Trainer, build_trainer, load_eval, load_train

logger = logging.getLogger("training.train")


@dataclass
class FitResult:
    """What :func:`fit` produced; probabilities are temperature-scaled."""

    model: nn.Module
    best_path: Path | None
    best_epoch: int
    calibration: dict[str, Any]
    metrics: dict[str, Any]
    val_probs: np.ndarray
    test_probs: np.ndarray | None
    history: list[dict[str, Any]]
    model_args: dict[str, Any]


def _log_split_metrics(metrics: dict[str, Any]) -> None:
    for part in ("val", "test"):
        if part in metrics:
            m = metrics[part]
            logger.info(
                "%s: accuracy %.3f %s, balanced accuracy %.3f, macro F1 %.3f, n=%d (%d patients)",
                part,
                m["accuracy"],
                m.get("accuracy_ci95"),
                m["balanced_accuracy"],
                m["macro_f1"],
                m["n"],
                m["n_patients"] or 0,
            )


def finalise(
    cfg: TrainConfig,
    bundle: DataBundle,
    trainer: Trainer,
    progress: Progress,
    val: EvalData,
    test_idx: np.ndarray | None,
    out: Path,
    base_meta: dict[str, Any],
    extra_metrics: dict[str, Any] | None = None,
) -> FitResult:
    """Best epoch back in, temperature fitted on val, val/test scored, the final ``best.pt`` written (rank 0)."""
    table, spec, model = bundle.table, bundle.spec, trainer.net
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    model.eval()
    val_logits = predict(cfg, trainer, val, spec)
    calibration = fit_temperature(val_logits, val.labels) if cfg.calibrate else {"temperature": 1.0, "method": "none"}
    t = float(calibration["temperature"])
    n_boot = cfg.n_bootstrap
    val_probs = softmax(val_logits, t)
    metrics: dict[str, Any] = {
        "val": compute_metrics(
            val_probs, val.labels, table.class_names, groups=table.groups[val.idx], n_bootstrap=n_boot
        ),
        "best_epoch": progress.best_epoch,
        "epochs_run": len(progress.history),
        "early_stopping_metric": cfg.early_stopping.metric,
    }
    test_probs = None
    if test_idx is not None and len(test_idx):
        test = load_eval(cfg, bundle, test_idx)
        test_probs = softmax(predict(cfg, trainer, test, spec), t)
        metrics["test"] = compute_metrics(
            test_probs, test.labels, table.class_names, groups=table.groups[test.idx], n_bootstrap=n_boot
        )
    metrics.update(extra_metrics or {})
    _log_split_metrics(metrics)
    best_path = checkpoint.save(
        out / "best.pt",
        model,
        **base_meta,
        metrics=to_plain(metrics),
        calibration=to_plain(calibration),
        half=cfg.half,
    )
    config_mod.save_config(cfg, out / "config.yaml")
    if progress.history:
        write_history(out / "history.csv", progress.history)
        training_curves_png(progress.history, out / "training_curves.png")
    logger.info("saved %s (best epoch %d, T=%.3f)", best_path, progress.best_epoch, t)
    return FitResult(
        model=model,
        best_path=best_path,
        best_epoch=progress.best_epoch,
        calibration=calibration,
        metrics=metrics,
        val_probs=val_probs,
        test_probs=test_probs,
        history=progress.history,
        model_args=trainer.model_args,
    )


def fit(
    cfg: TrainConfig,
    bundle: DataBundle,
    out_dir: str | Path,
    *,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray | None = None,
    resume: dict[str, Any] | None = None,
    init_backbone: dict[str, torch.Tensor] | None = None,
    freeze_backbone: bool = False,
    data_extra: dict[str, Any] | None = None,
    extra_metrics: dict[str, Any] | None = None,
    keep_last: bool = True,
    dist: Dist = SINGLE,
) -> FitResult:
    """Train on ``train_idx``, early-stop on ``val_idx``, score ``test_idx``; write checkpoints.

    Loaders (:func:`load_train`, :func:`load_eval`) -> build (:func:`build_trainer`) ->
    resume (:func:`resume_progress`) -> epoch loop (:func:`run_epochs`) -> :func:`finalise`.

    Args:
        cfg: resolved config (:func:`training.config.resolve`).
        bundle: prepared data; the index arrays index ``bundle.images``/``bundle.table``.
        out_dir: where ``best.pt``, ``last.pt``, ``config.yaml``, ``history.csv`` go.
        resume: a ``last.pt`` dict (``retina.checkpoint.read``) to continue from.
        init_backbone: state dict for ``model.backbone`` (SimCLR fine-tuning).
        freeze_backbone: train only the head (linear probe); frozen BatchNorm stays in eval.
        data_extra: merged into the checkpoint's ``data`` block.
        extra_metrics: merged into the checkpoint's ``metrics`` block (e.g. ``cv``).
        keep_last: also write ``last.pt`` (resume state) every epoch.
        dist: this process's place under torchrun (:mod:`training.fit.distributed`); the default
            is one process. Only rank 0 writes files and returns the metrics; the other ranks
            return a :class:`FitResult` without ``best_path`` or metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)  # the same on every rank: DDP starts all from rank 0's weights anyway
    device = distributed.init(dist, resolve_device(cfg.device))
    threads = set_threads(distributed.threads_per_process(cfg.threads, dist))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    logger.info("device %s, %d CPU threads", device, threads)
    train = load_train(cfg, bundle, train_idx, dist)
    val = load_eval(cfg, bundle, val_idx)
    trainer = build_trainer(
        cfg, bundle, train, device, init_backbone=init_backbone, freeze_backbone=freeze_backbone, dist=dist
    )
    progress = resume_progress(resume, trainer, out)
    base_meta = _base_meta(cfg, bundle, trainer.model_args, trainer.init, data_extra)
    run_epochs(cfg, bundle, trainer, train, val, progress, out, base_meta, keep_last=keep_last)
    if not dist.is_main:
        distributed.barrier(dist)  # until rank 0 has written the final checkpoint
        k = len(bundle.table.class_names)
        return FitResult(trainer.net, None, progress.best_epoch, {}, {}, np.zeros((0, k)), None, [], trainer.model_args)
    result = finalise(cfg, bundle, trainer, progress, val, test_idx, out, base_meta, extra_metrics)
    distributed.barrier(dist)
    return result


def _base_meta(
    cfg: TrainConfig,
    bundle: DataBundle,
    model_args: dict[str, Any],
    init: dict[str, Any],
    data_extra: dict[str, Any] | None,
) -> dict[str, Any]:
    table = bundle.table
    data = {**bundle.meta, **(data_extra or {}), "init": init, "label_fraction": cfg.label_fraction}
    data.setdefault("evaluation", "held-out patient-disjoint test split")
    return {
        "arch": cfg.model.arch,
        "model_args": model_args,
        "task": table.task,
        "class_names": list(table.class_names),
        "preprocess": bundle.spec,
        "label_scheme": table.label_scheme,
        "config": to_plain(cfg.to_dict()),
        "data": to_plain(data),
        "version": cfg.version,
    }
