"""One supervised training run: :func:`fit` trains with early stopping on the validation split, keeps the
best epoch, fits a temperature on the validation logits, scores val and test, and writes

    OUT/best.pt       the best epoch (retina.checkpoint format; fp16 when ``half``)
    OUT/last.pt       the last epoch plus optimizer/scheduler state for ``--resume``
    OUT/config.yaml   the resolved config (also inside both checkpoints)
    OUT/history.csv   one row per epoch, and OUT/training_curves.png
    OUT/train.log

``training.train`` (the CLI), ``training.cv`` and ``training.simclr`` call it.
"""

from __future__ import annotations

import copy
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from retina import checkpoint
from retina.labels import DR_GRADES
from retina.preprocessing import PreprocessSpec
from retina.runtime import resolve_device
from retina.serialize import to_plain
from training import config as config_mod
from training import distributed
from training.calibration import fit_temperature, nll
from training.config import ConfigError
from training.data import (
    DataBundle,
    class_weights,
    domain_sample_weights,
    image_domains,
    label_fraction_indices,
    smote_resample,
)
from training.distributed import SINGLE, Dist
from training.engine import (
    AugmentedBatches,
    TensorBatches,
    predict_logits,
    seed_everything,
    set_threads,
    softmax,
    train_one_epoch,
)
from training.metrics import compute_metrics, derived_binary, quiet_sklearn
from training.plots import training_curves_png
from training.warm_start import build_model_warm

HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_referable_auc",
    "lr",
    "seconds",
    "images_per_s",
)


logger = logging.getLogger("training.train")

# ----------------------------------------------------------------------------- model


def model_args_for(cfg: dict[str, Any], spec: PreprocessSpec, num_classes: int) -> dict[str, Any]:
    return {"in_channels": spec.channels, "num_classes": num_classes, **copy.deepcopy(cfg["model"]["args"])}


def build_for_training(
    cfg: dict[str, Any], spec: PreprocessSpec, num_classes: int
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Build ``model.arch``; returns ``(model, model_args to save, init info)``.

    ``weights`` (ImageNet/local init) is dropped from the saved ``model_args``: the checkpoint
    holds the trained weights, and serving must rebuild it without the pretrained file.
    A missing pretrained file raises, unless ``model.args.weights_missing: scratch`` asks for
    random initialisation; that is logged as a warning and recorded in the checkpoint, and
    the backbone is then trained (a frozen random backbone would be meaningless).
    """
    arch = cfg["model"]["arch"]
    args = model_args_for(cfg, spec, num_classes)
    on_missing = args.pop("weights_missing", "error")
    init: dict[str, Any] = {"weights": args.get("weights"), "pretrained": bool(args.get("weights"))}
    try:
        model = build_model_warm(arch, **args)
    except FileNotFoundError as e:
        if on_missing != "scratch":
            raise
        logger.warning("PRETRAINED WEIGHTS MISSING, training %s from scratch (weights_missing=scratch): %s", arch, e)
        args["weights"] = None
        if args.get("freeze_backbone"):
            logger.warning("freeze_backbone disabled: a frozen randomly initialised backbone cannot learn")
            args["freeze_backbone"] = False
        init.update(pretrained=False, fallback="scratch", reason=str(e))
        model = build_model_warm(arch, **args)
    saved = {k: v for k, v in args.items() if k != "weights"}
    return model, saved, init


def make_optimizer(cfg: dict[str, Any], model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    o = cfg["optim"]
    params = [p for p in model.parameters() if p.requires_grad]
    lr = o["lr"] if lr is None else lr
    if o["name"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=o["weight_decay"])
    if o["name"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=o["weight_decay"])
    return torch.optim.SGD(params, lr=lr, momentum=o["momentum"], weight_decay=o["weight_decay"], nesterov=True)


def freeze_module(module: nn.Module) -> None:
    """No gradients, and BatchNorm running statistics kept (see :func:`keep_frozen_bn_eval`)."""
    for p in module.parameters():
        p.requires_grad = False


def keep_frozen_bn_eval(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode.

    A frozen (pretrained) backbone must keep its running statistics: in train mode they
    would drift towards the small training batches and change the features it was frozen for.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


# ----------------------------------------------------------------------------- fit


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


def referable_auc(logits: np.ndarray, y: np.ndarray, class_names: tuple[str, ...]) -> float:
    """Validation ROC AUC of P(grade >= 2) for 5-grade DR models; logits ``(N, 5)``, labels ``(N,)``.

    The shipped fundus model is judged on referable DR, so early stopping can select on it;
    5-grade balanced accuracy is much noisier on a few hundred validation images. The score
    is the one ``training.metrics`` reports (NaN when the split lacks either class).
    """
    if tuple(class_names) != DR_GRADES:
        raise ConfigError("early_stopping.metric val_referable_auc needs a 5-grade DR model (label_scheme: grade)")
    p = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
    return float(derived_binary(p, np.asarray(y), 2, None, n_boot=0, seed=0)["roc_auc"])


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


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


@dataclass
class TrainData:
    """The training split as it is drawn each epoch, plus the class weights of the loss."""

    loader: Any  # TensorBatches | AugmentedBatches: (x uint8 (B, C, S, S), y (B,)) batches
    n_images: int
    class_weights: torch.Tensor | None


@dataclass
class EvalData:
    """A fixed evaluation split: its rows of the bundle ``(N,)``, batches in row order and the labels ``(N,)``."""

    idx: np.ndarray
    loader: TensorBatches
    labels: np.ndarray


@dataclass
class Trainer:
    """Model, optimiser, schedule and loss of one run, on ``device``.

    ``model`` is what trains (``DistributedDataParallel`` around ``net`` under torchrun);
    ``net`` is the plain network that is evaluated, resumed into and saved.
    """

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    criterion: nn.Module
    device: torch.device
    channels_last: bool
    model_args: dict[str, Any]
    init: dict[str, Any]
    dist: Dist = SINGLE


@dataclass
class Progress:
    """Early-stopping state carried from epoch to epoch (and through ``last.pt`` for ``--resume``)."""

    start_epoch: int = 1
    best: tuple[float, float] | None = None  # (score, loss) of the best epoch
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _sample_weights(cfg: dict[str, Any], bundle: DataBundle, train_idx: np.ndarray, tr_y: np.ndarray) -> Any:
    """Per-draw weights ``(N,)`` for ``weighted_sampler`` and/or ``domain_balance``; ``None`` = uniform."""
    imbalance = cfg["imbalance"]
    sample_w = None
    if imbalance == "weighted_sampler":
        counts = np.bincount(tr_y, minlength=len(bundle.table.class_names)).astype(np.float64)
        sample_w = torch.as_tensor(1.0 / counts[tr_y])
    if cfg["domain_balance"] is not None and imbalance != "smote":
        domains = image_domains(bundle.table, train_idx)
        dom_w = domain_sample_weights(domains, float(cfg["domain_balance"]))
        sample_w = dom_w if sample_w is None else dom_w * sample_w
        names, counts = np.unique(domains, return_counts=True)
        share = {str(d): round(float(dom_w[domains == d].sum() / dom_w.sum()), 3) for d in names}
        logger.info(
            "domain_balance=%s: images %s, share of draws %s",
            cfg["domain_balance"],
            dict(zip(names.tolist(), counts.tolist(), strict=True)),
            share,
        )
    return sample_w


def load_train(cfg: dict[str, Any], bundle: DataBundle, train_idx: np.ndarray, dist: Dist = SINGLE) -> TrainData:
    """Label fraction, then imbalance handling (training rows only), then the epoch iterator.

    Under torchrun every rank builds the same iterator (same rows, weights and seed) and
    iterates its own shard of each epoch's draw.
    """
    table, seed = bundle.table, cfg["seed"]
    train_idx = np.asarray(train_idx)
    if cfg["label_fraction"] is not None and cfg["label_fraction"] < 1:
        keep = label_fraction_indices(table.labels[train_idx], cfg["label_fraction"], seed=cfg["data"]["seed"])
        logger.info("label_fraction=%g: %d of %d training images", cfg["label_fraction"], len(keep), len(train_idx))
        train_idx = train_idx[keep]
    tr_x = bundle.images[torch.as_tensor(train_idx)]
    tr_y = table.labels[train_idx]
    if cfg["imbalance"] == "smote":
        tr_x, tr_y = smote_resample(tr_x, tr_y, seed=seed)
    weights = None
    if cfg["imbalance"] == "class_weights":
        weights = class_weights(tr_y, len(table.class_names), cfg["class_weight_power"])
    sample_w = _sample_weights(cfg, bundle, train_idx, tr_y)
    bs = cfg["batch_size"]
    if cfg["augment"] == "none":
        loader: Any = TensorBatches(
            tr_x, tr_y, bs, shuffle=True, seed=seed, weights=sample_w, num_replicas=dist.world_size, rank=dist.rank
        )
    else:
        loader = AugmentedBatches(
            tr_x,
            tr_y,
            bundle.spec,
            cfg["augment"],
            bs,
            seed=seed,
            weights=sample_w,
            num_workers=cfg["num_workers"],
            num_samples=cfg["epoch_images"],
            num_replicas=dist.world_size,
            rank=dist.rank,
        )
    return TrainData(loader=loader, n_images=len(tr_y), class_weights=weights)


def load_eval(cfg: dict[str, Any], bundle: DataBundle, idx: np.ndarray) -> EvalData:
    """Rows ``idx`` as fixed batches of ``eval_batch_size``."""
    y = bundle.table.labels[idx]
    return EvalData(idx, TensorBatches(bundle.images[torch.as_tensor(idx)], y, cfg["eval_batch_size"]), y)


def build_trainer(
    cfg: dict[str, Any],
    bundle: DataBundle,
    train: TrainData,
    device: torch.device,
    *,
    init_backbone: dict[str, torch.Tensor] | None = None,
    freeze_backbone: bool = False,
    dist: Dist = SINGLE,
) -> Trainer:
    """Model (warm-started or SimCLR backbone, optionally frozen), optimiser, cosine schedule, loss.

    Under torchrun the network is wrapped in ``DistributedDataParallel`` (which makes every
    rank start from rank 0's weights and averages the gradients of each step).
    """
    model, model_args, init = build_for_training(cfg, bundle.spec, len(bundle.table.class_names))
    if init_backbone is not None:
        model.backbone.load_state_dict(init_backbone)
        init["backbone"] = "simclr"
    if freeze_backbone:
        freeze_module(model.backbone)
    model.to(device)
    channels_last = bool(cfg["channels_last"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if dist.enabled:
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(cfg, net)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg["epochs"]))
        if cfg["scheduler"] == "cosine"
        else None
    )
    w = train.class_weights
    criterion = nn.CrossEntropyLoss(
        weight=w.to(device) if w is not None else None, label_smoothing=cfg["label_smoothing"]
    )
    logger.info(
        "%s: %d parameters (%d trainable), %d training images, batch %d x %d processes, %d epochs",
        cfg["model"]["arch"],
        sum(p.numel() for p in net.parameters()),
        sum(p.numel() for p in net.parameters() if p.requires_grad),
        train.n_images,
        cfg["batch_size"],
        dist.world_size,
        cfg["epochs"],
    )
    return Trainer(model, net, optimizer, scheduler, criterion, device, channels_last, model_args, init, dist)


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
    cfg: dict[str, Any], trainer: Trainer, train: TrainData, val: EvalData, spec: PreprocessSpec, epoch: int
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Train one epoch and score the validation split; returns ``(history row, val logits (N, K))``.

    Training statistics are those of all ranks together; the validation split is scored on
    rank 0 only (the other ranks get ``None`` logits and a row without ``val_*``).
    """
    # Augmentation/dropout RNG: the same stream after a resume; a different one per rank
    # (rank 0's is the single-process one), so that ranks do not draw identical augmentations.
    torch.manual_seed(cfg["seed"] + epoch + 1_000_003 * trainer.dist.rank)
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
        progress=cfg["progress"] and trainer.dist.is_main,  # one progress bar, rank 0's
    )
    stats = distributed.reduce_epoch_stats(stats, trainer.dist, trainer.device)
    if trainer.scheduler is not None:
        trainer.scheduler.step()
    if not trainer.dist.is_main:
        return {"epoch": epoch, "train_loss": stats["loss"], "train_acc": stats["acc"], "lr": lr}, None
    logits = _predict(cfg, trainer, val, spec)
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
    cfg: dict[str, Any],
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
    for epoch in range(progress.start_epoch, cfg["epochs"] + 1):
        row, logits = _epoch_row(cfg, trainer, train, val, bundle.spec, epoch)
        stop = None
        if trainer.dist.is_main:
            assert logits is not None
            stop = _record_epoch(cfg, bundle, trainer, val, progress, out, base_meta, row, logits, keep_last)
        if distributed.broadcast(stop, trainer.dist):
            break


def _record_epoch(
    cfg: dict[str, Any],
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
    es = cfg["early_stopping"]
    epoch = row["epoch"]
    progress.history.append(row)
    v_loss, v_bal = row["val_loss"], row["val_balanced_accuracy"]
    v_score = v_bal
    if es["metric"] == "val_referable_auc":
        v_score = row["val_referable_auc"] = referable_auc(logits, val.labels, bundle.table.class_names)
    improved = _better(es["metric"], v_score, v_loss, progress.best)
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
        cfg["epochs"],
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
    _write_history(out / "history.csv", progress.history)
    if es["patience"] and progress.bad_epochs >= es["patience"]:
        logger.info("early stopping: no improvement of %s for %d epochs", es["metric"], progress.bad_epochs)
        return True
    return False


def _predict(cfg: dict[str, Any], trainer: Trainer, data: EvalData, spec: PreprocessSpec) -> np.ndarray:
    """Logits ``(N, K)`` of ``data`` in row order."""
    # The plain network: a DDP forward on rank 0 alone would wait for the other ranks.
    logits, _ = predict_logits(
        trainer.net, data.loader, trainer.device, spec, amp=cfg["amp"], channels_last=trainer.channels_last
    )
    return logits


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
    cfg: dict[str, Any],
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
    val_logits = _predict(cfg, trainer, val, spec)
    calibration = (
        fit_temperature(val_logits, val.labels) if cfg["calibrate"] else {"temperature": 1.0, "method": "none"}
    )
    t = float(calibration["temperature"])
    n_boot = cfg["n_bootstrap"]
    val_probs = softmax(val_logits, t)
    metrics: dict[str, Any] = {
        "val": compute_metrics(
            val_probs, val.labels, table.class_names, groups=table.groups[val.idx], n_bootstrap=n_boot
        ),
        "best_epoch": progress.best_epoch,
        "epochs_run": len(progress.history),
        "early_stopping_metric": cfg["early_stopping"]["metric"],
    }
    test_probs = None
    if test_idx is not None and len(test_idx):
        test = load_eval(cfg, bundle, test_idx)
        test_probs = softmax(_predict(cfg, trainer, test, spec), t)
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
        half=cfg["half"],
    )
    config_mod.save_config(cfg, out / "config.yaml")
    if progress.history:
        _write_history(out / "history.csv", progress.history)
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
    cfg: dict[str, Any],
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
        dist: this process's place under torchrun (:mod:`training.distributed`); the default
            is one process. Only rank 0 writes files and returns the metrics; the other ranks
            return a :class:`FitResult` without ``best_path`` or metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg["seed"])  # the same on every rank: DDP starts all from rank 0's weights anyway
    device = distributed.init(dist, resolve_device(cfg["device"]))
    threads = set_threads(distributed.threads_per_process(cfg["threads"], dist))
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
    cfg: dict[str, Any],
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
            amp=cfg["amp"],
            channels_last=channels_last,
            progress=cfg["progress"] if progress is None else progress,
        )
    finally:
        handle.remove()


def _base_meta(
    cfg: dict[str, Any],
    bundle: DataBundle,
    model_args: dict[str, Any],
    init: dict[str, Any],
    data_extra: dict[str, Any] | None,
) -> dict[str, Any]:
    table = bundle.table
    data = {**bundle.meta, **(data_extra or {}), "init": init, "label_fraction": cfg["label_fraction"]}
    data.setdefault("evaluation", "held-out patient-disjoint test split")
    return {
        "arch": cfg["model"]["arch"],
        "model_args": model_args,
        "task": table.task,
        "class_names": list(table.class_names),
        "preprocess": bundle.spec,
        "label_scheme": table.label_scheme,
        "config": to_plain(cfg),
        "data": to_plain(data),
        "version": cfg["version"],
    }
