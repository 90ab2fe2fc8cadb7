"""The epoch loop of one run: train, score validation, keep the best epoch, stop early, write ``last.pt``.

Early stopping watches ``early_stopping.metric`` on the validation split; :class:`Progress`
carries its state from epoch to epoch and, through ``last.pt``, across a ``--resume``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from retina import checkpoint
from retina.labels import DR_GRADES
from retina.preprocessing import PreprocessSpec
from retina.serialize import to_plain
from training.config import ConfigError, TrainConfig
from training.data.bundle import DataBundle
from training.evaluate.calibration import nll
from training.evaluate.metrics import derived_binary, quiet_sklearn
from training.evaluate.predict import predict_logits
from training.fit import distributed
from training.fit.loop import train_one_epoch
from training.fit.model import keep_frozen_bn_eval
from training.fit.trainer import EvalData, TrainData, Trainer

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_referable_auc",
    "val_domain_referable_auc",
    "lr",
    "seconds",
    "images_per_s",
)

logger = logging.getLogger("training.train")


@dataclass
class Progress:
    """Early-stopping state carried from epoch to epoch (and through ``last.pt`` for ``--resume``)."""

    start_epoch: int = 1
    best: tuple[float, float] | None = None  # (score, loss) of the best epoch
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def referable_auc(logits: np.ndarray, y: np.ndarray, class_names: tuple[str, ...]) -> float:
    """Validation ROC AUC of P(grade >= 2) for 5-grade DR models; logits ``(N, 5)``, labels ``(N,)``.

    The shipped fundus model is judged on referable DR, so early stopping can select on it;
    5-grade balanced accuracy is much noisier on a few hundred validation images. The score
    is the one ``training.evaluate.metrics`` reports (NaN when the split lacks either class).
    """
    if tuple(class_names) != DR_GRADES:
        raise ConfigError("early_stopping.metric val_referable_auc needs a 5-grade DR model (label_scheme: grade)")
    p = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
    return float(derived_binary(p, np.asarray(y), 2, None, n_boot=0, seed=0)["roc_auc"])


def domain_referable_auc(
    logits: np.ndarray, y: np.ndarray, domains: np.ndarray | None, class_names: tuple[str, ...]
) -> float:
    """Mean over datasets of each one's referable AUC; logits ``(N, 5)``, labels and domains ``(N,)``.

    Why not the pooled AUC: the datasets differ in prevalence (IDRiD 63 % referable, EyePACS 19 %),
    so a network that merely recognises the camera already ranks the pooled set well. Within one
    dataset the camera is fixed and only the retina can rank. A dataset lacking either class is
    skipped; ``domains`` None = one dataset.
    """
    if domains is None:
        return referable_auc(logits, y, class_names)
    aucs = [referable_auc(logits[domains == d], y[domains == d], class_names) for d in np.unique(domains)]
    aucs = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _better(metric: str, score: float, loss: float, best: tuple[float, float] | None) -> bool:
    if best is None or metric == "last":
        # "last": a fixed schedule; on tiny validation sets (a handful of images) picking an
        # epoch by its score selects noise, so the final epoch is kept instead.
        return True
    b_score, b_loss = best
    if metric == "val_loss":
        return loss < b_loss - 1e-12
    # Ties are common on small validation sets: break them by the lower loss.
    return score > b_score + 1e-12 or (abs(score - b_score) <= 1e-12 and loss < b_loss - 1e-12)


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def resume_progress(resume: dict[str, Any] | None, trainer: Trainer, out: Path) -> Progress:
    """A fresh :class:`Progress`, or the model/optimiser/schedule and progress stored in a ``last.pt``."""
    if resume is None:
        return Progress()
    trainer.net.load_state_dict(resume["state_dict"])  # every rank reads the same last.pt
    st = resume["extra"]["resume"]
    trainer.optimizer.load_state_dict(st["optimizer"])
    if trainer.scheduler is not None and st.get("scheduler"):
        trainer.scheduler.load_state_dict(st["scheduler"])
    progress = Progress(
        start_epoch=int(st["epoch"]) + 1,
        best=tuple(st["best"]) if st.get("best") else None,
        best_epoch=int(st["best_epoch"]),
        bad_epochs=int(st["bad_epochs"]),
        history=list(st["history"]),
    )
    if (out / "best.pt").is_file():
        progress.best_state = checkpoint.dequantize_state(checkpoint.read(out / "best.pt"))
    logger.info("resumed from epoch %d (best epoch %d)", progress.start_epoch - 1, progress.best_epoch)
    return progress


def _resume_payload(trainer: Trainer, progress: Progress, epoch: int) -> dict[str, Any]:
    """What ``last.pt`` carries under ``extra.resume`` so that :func:`resume_progress` can continue."""
    return {
        "epoch": epoch,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "best": list(progress.best) if progress.best else None,
        "best_epoch": progress.best_epoch,
        "bad_epochs": progress.bad_epochs,
        "history": to_plain(progress.history),
    }


def _epoch_row(
    cfg: TrainConfig, trainer: Trainer, train: TrainData, val: EvalData, spec: PreprocessSpec, epoch: int
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Train one epoch and score the validation split; returns ``(history row, val logits (N, K))``.

    Training statistics are those of all ranks together; the validation split is scored on
    rank 0 only (the other ranks get ``None`` logits and a row without ``val_*``).
    """
    # Augmentation/dropout RNG: the same stream after a resume; a different one per rank
    # (rank 0's is the single-process one), so that ranks do not draw identical augmentations.
    torch.manual_seed(cfg.seed + epoch + 1_000_003 * trainer.dist.rank)
    lr = trainer.optimizer.param_groups[0]["lr"]
    stats = _train_epoch(
        trainer.model,
        train.loader,
        trainer.optimizer,
        trainer.criterion,
        trainer.device,
        spec,
        epoch,
        cfg,
        trainer.channels_last,
        progress=cfg.progress and trainer.dist.is_main,  # one progress bar, rank 0's
    )
    stats = distributed.reduce_epoch_stats(stats, trainer.dist, trainer.device)
    if trainer.scheduler is not None:
        trainer.scheduler.step()
    if not trainer.dist.is_main:
        return {"epoch": epoch, "train_loss": stats["loss"], "train_acc": stats["acc"], "lr": lr}, None
    logits = predict(cfg, trainer, val, spec)
    v_pred = logits.argmax(1)
    with quiet_sklearn():  # tiny val sets miss classes the model predicts
        v_bal = float(balanced_accuracy_score(val.labels, v_pred))
    row = {
        "epoch": epoch,
        "train_loss": stats["loss"],
        "train_acc": stats["acc"],
        "val_loss": nll(logits, val.labels),
        "val_accuracy": float((v_pred == val.labels).mean()),
        "val_balanced_accuracy": v_bal,
        "lr": lr,
        "seconds": stats["seconds"],
        "images_per_s": stats["images_per_s"],
    }
    return row, logits


def run_epochs(
    cfg: TrainConfig,
    bundle: DataBundle,
    trainer: Trainer,
    train: TrainData,
    val: EvalData,
    progress: Progress,
    out: Path,
    base_meta: dict[str, Any],
    *,
    keep_last: bool = True,
) -> None:
    """Epochs ``progress.start_epoch..epochs`` with early stopping; writes ``best.pt``/``last.pt``/history.

    Under torchrun rank 0 keeps the books and decides when to stop; the others follow its verdict.
    """
    for epoch in range(progress.start_epoch, cfg.epochs + 1):
        row, logits = _epoch_row(cfg, trainer, train, val, bundle.spec, epoch)
        stop = None
        if trainer.dist.is_main:
            assert logits is not None
            stop = _record_epoch(cfg, bundle, trainer, val, progress, out, base_meta, row, logits, keep_last)
        if distributed.broadcast(stop, trainer.dist):
            break


def _record_epoch(
    cfg: TrainConfig,
    bundle: DataBundle,
    trainer: Trainer,
    val: EvalData,
    progress: Progress,
    out: Path,
    base_meta: dict[str, Any],
    row: dict[str, Any],
    logits: np.ndarray,
    keep_last: bool,
) -> bool:
    """Book one epoch (history, ``best.pt`` when it improved, ``last.pt``); returns whether to stop early."""
    es = cfg.early_stopping
    epoch = row["epoch"]
    progress.history.append(row)
    v_loss, v_bal = row["val_loss"], row["val_balanced_accuracy"]
    v_score = v_bal
    if es.metric in ("val_referable_auc", "val_domain_referable_auc"):
        names, parts = bundle.table.class_names, bundle.table.parts
        row["val_referable_auc"] = referable_auc(logits, val.labels, names)
        row["val_domain_referable_auc"] = domain_referable_auc(
            logits, val.labels, None if parts is None else parts[val.idx], names
        )
        v_score = row[es.metric]
    improved = _better(es.metric, v_score, v_loss, progress.best)
    if improved:
        progress.best, progress.best_epoch, progress.bad_epochs = (v_score, v_loss), epoch, 0
        progress.best_state = {k: v.detach().clone() for k, v in _plain_state(trainer.net).items()}
        checkpoint.save(
            out / "best.pt",
            trainer.net,
            **base_meta,
            metrics={"val": {"loss": v_loss, "balanced_accuracy": v_bal}, "best_epoch": epoch, "final": False},
        )
    else:
        progress.bad_epochs += 1
    logger.info(
        "epoch %d/%d train loss %.4f acc %.3f | val loss %.4f acc %.3f bal-acc %.3f | %.0f img/s %.1fs%s",
        epoch,
        cfg.epochs,
        row["train_loss"],
        row["train_acc"],
        v_loss,
        row["val_accuracy"],
        v_bal,
        row["images_per_s"],
        row["seconds"],
        " *" if improved else "",
    )
    if keep_last:
        resume_state = _resume_payload(trainer, progress, epoch)
        checkpoint.save(
            out / "last.pt", trainer.net, **base_meta, metrics={"epoch": epoch}, extra={"resume": resume_state}
        )
    write_history(out / "history.csv", progress.history)
    if es.patience and progress.bad_epochs >= es.patience:
        logger.info("early stopping: no improvement of %s for %d epochs", es.metric, progress.bad_epochs)
        return True
    return False


def predict(cfg: TrainConfig, trainer: Trainer, data: EvalData, spec: PreprocessSpec) -> np.ndarray:
    """Logits ``(N, K)`` of ``data`` in row order."""
    # The plain network: a DDP forward on rank 0 alone would wait for the other ranks.
    logits, _ = predict_logits(
        trainer.net, data.loader, trainer.device, spec, amp=cfg.amp, channels_last=trainer.channels_last
    )
    return logits


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return getattr(model, "_orig_mod", model).state_dict()


def _train_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: torch.device,
    spec: PreprocessSpec,
    epoch: int,
    cfg: TrainConfig,
    channels_last: bool,
    *,
    progress: bool | None = None,
) -> dict[str, float]:
    # train_one_epoch calls model.train(); re-freeze BN of frozen layers right after via a hook.
    handle = model.register_forward_pre_hook(lambda m, _: keep_frozen_bn_eval(m))
    try:
        return train_one_epoch(
            model,
            loader,
            optimizer,
            criterion,
            device,
            spec,
            epoch=epoch,
            amp=cfg.amp,
            channels_last=channels_last,
            progress=cfg.progress if progress is None else progress,
        )
    finally:
        handle.remove()
