"""Train one model from a YAML config and save a self-describing checkpoint.

    python -m training.train --config training/configs/oct_simplecnn.yaml \\
        --data ../shared/data/oct-dev --out runs/oct_simplecnn [--epochs N] [--set key=value ...]
    python -m training.train --resume runs/oct_simplecnn/last.pt [--epochs 20]

Pipeline: ``read_table`` -> optional patient-level cap (``data.max_images``) ->
``split_indices`` (patient-disjoint) -> ``load_prepared`` (``prepare()`` once per image,
cached) -> :func:`fit`: train with early stopping on the validation split, keep the best
epoch, fit a temperature on the validation logits, score val and test, and write

    OUT/best.pt       the best epoch (retina.checkpoint format; fp16 when ``half``)
    OUT/last.pt       the last epoch plus optimizer/scheduler state for ``--resume``
    OUT/config.yaml   the resolved config (also inside both checkpoints)
    OUT/history.csv   one row per epoch, and OUT/training_curves.png
    OUT/train.log

A config with a ``simclr:`` section runs :mod:`training.simclr` instead (pretraining,
then one fine-tuned checkpoint per label fraction).
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from retina import checkpoint
from retina.labels import DR_GRADES
from retina.preprocessing import PreprocessSpec, augmentations
from training import config as config_mod
from training.calibration import fit_temperature, nll
from training.config import ConfigError
from training.datasets import (
    DatasetError,
    ImageTable,
    PreparedDataset,
    load_prepared,
    read_tables,
    split_indices,
    split_summary,
)
from training.engine import (
    TensorBatches,
    predict_logits,
    resolve_device,
    seed_everything,
    set_threads,
    softmax,
    train_one_epoch,
)
from training.metrics import compute_metrics, derived_binary, quiet_sklearn, to_plain
from training.plots import training_curves_png
from training.warm_start import build_model_warm

logger = logging.getLogger("training.train")

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


# ----------------------------------------------------------------------------- data


@dataclass
class DataBundle:
    """A dataset ready for training: the (capped) table, its splits and prepared pixels.

    ``images`` is uint8 ``(N, C, S, S)`` for every row of ``table``; split arrays index it.
    """

    table: ImageTable
    splits: dict[str, np.ndarray]
    images: torch.Tensor
    spec: PreprocessSpec
    meta: dict[str, Any] = field(default_factory=dict)


def _units(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices per patient, in order of first appearance of the sorted ids."""
    _, inverse = np.unique(groups.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)


def cap_by_patients(table: ImageTable, max_images: int, seed: int = 0) -> np.ndarray:
    """Row indices of a class-stratified subset of about ``max_images`` images, whole patients only.

    Patients are visited in a seeded random order and taken (all their images) while one of
    their classes is under its share ``ceil(max_images / K)`` and the total stays within the
    cap. Never splits a patient, so the later patient-disjoint split stays leak-free. Where
    the source defines splits (OCT2017 folders, MedMNIST), each split is capped in proportion
    to its size so none of them disappears.
    """
    if max_images >= len(table):
        return np.arange(len(table))
    rng = np.random.default_rng(seed)
    pools: list[tuple[np.ndarray, int]] = []
    if table.split is not None:
        for s in np.unique(table.split):
            rows = np.flatnonzero(table.split == s)
            pools.append((rows, max(len(table.class_names), math.ceil(max_images * len(rows) / len(table)))))
    else:
        pools.append((np.arange(len(table)), max_images))
    chosen: list[np.ndarray] = []
    for rows, budget in pools:
        k = len(np.unique(table.labels[rows]))
        share = math.ceil(budget / max(1, k))
        counts = np.zeros(len(table.class_names), dtype=np.int64)
        total = 0
        units = _units(table.groups[rows])
        for u in rng.permutation(len(units)):
            r = rows[units[u]]
            if total + len(r) > budget:
                continue
            classes = np.unique(table.labels[r])
            if np.any(counts[classes] < share):
                chosen.append(r)
                counts += np.bincount(table.labels[r], minlength=len(counts))
                total += len(r)
            if total >= budget:
                break
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def select_rows(cfg: dict[str, Any], table: ImageTable) -> ImageTable:
    """The table a run trains on: the whole one, or the ``data.max_images`` patient-level cap."""
    cap = cfg["data"]["max_images"]
    if cap is None:
        return table
    idx = cap_by_patients(table, int(cap), seed=cfg["data"]["seed"])
    logger.info("data.max_images=%d: kept %d of %d images (whole patients)", cap, len(idx), len(table))
    return table.subset(idx)


def read_config_table(cfg: dict[str, Any], path: str | Path | None = None) -> ImageTable:
    d = cfg["data"]
    path = path or d["path"]
    if not path:
        raise ConfigError("no dataset: pass --data PATH or set data.path")
    return read_tables(path, d["format"], label_scheme=d["label_scheme"], task=cfg["task"] or None)


def prepare_data(cfg: dict[str, Any], *, splits: bool = True) -> DataBundle:
    """Read, cap, split (patient-disjoint) and prepare the config's dataset."""
    full = read_config_table(cfg)
    table = select_rows(cfg, full)
    spec = config_mod.preprocess_spec(cfg)
    d = cfg["data"]
    parts = split_indices(table, val_frac=d["val_frac"], test_frac=d["test_frac"], seed=d["seed"]) if splits else {}
    cache = Path(d["cache_dir"]) if d["cache_dir"] else None
    images = load_prepared(table, np.arange(len(table)), spec, cache_dir=cache, progress=cfg["progress"])
    meta = {
        "source": table.source,
        "root": table.root,
        "format": d["format"],
        "label_scheme": table.label_scheme,
        "fingerprint": full.fingerprint(),
        "fingerprint_used": table.fingerprint(),
        "n_images": len(table),
        "n_patients": len(set(table.groups)),
        "class_counts": table.class_counts(),
        "max_images": d["max_images"],
        "split_seed": d["seed"],
        "val_frac": d["val_frac"],
        "test_frac": d["test_frac"],
    }
    if parts:
        meta["splits"] = split_summary(table, parts)
        for s, info in meta["splits"].items():
            logger.info(
                "split %-5s %5d images, %4d patients, classes %s", s, info["images"], info["patients"], info["classes"]
            )
    return DataBundle(table=table, splits=parts, images=images, spec=spec, meta=meta)


def label_fraction_indices(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Positions of a stratified ``fraction`` of ``labels``: at least one per present class, seeded."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(rows))))
        keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def smote_resample(images: torch.Tensor, labels: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Oversample minority classes with imbalanced-learn's SMOTE on flattened uint8 images.

    Only ever called on the *training* split after splitting, so no synthetic image mixes
    validation/test pixels. Synthetic pixels are rounded back to uint8 ``(M, C, S, S)``;
    the originals come first, unchanged. Classes with a single image cannot be interpolated:
    they are duplicated (``RandomOverSampler``) instead, with a warning.
    """
    from imblearn.over_sampling import SMOTE, RandomOverSampler

    counts = np.bincount(labels)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() == present.max():
        return images, labels
    n, c, h, w = images.shape
    x = images.reshape(n, -1).numpy().astype(np.float32)
    k = int(min(5, present.min() - 1))
    if k < 1:
        logger.warning("SMOTE needs >= 2 images per class; duplicating the rarest instead")
        sampler: Any = RandomOverSampler(random_state=seed)
    else:
        sampler = SMOTE(k_neighbors=k, random_state=seed)
    xr, yr = sampler.fit_resample(x, labels)
    xr = np.clip(np.rint(xr), 0, 255).astype(np.uint8).reshape(-1, c, h, w)
    logger.info("SMOTE: train split %s -> %s", counts.tolist(), np.bincount(yr).tolist())
    return torch.from_numpy(xr), np.asarray(yr, dtype=np.int64)


def image_domains(table: ImageTable, idx: np.ndarray) -> np.ndarray:
    """``(len(idx),)`` str: the dataset of each row and whether it is a small square crop or a photo.

    EyePACS as shared here mixes 256x256 publisher-normalised crops with raw camera photos,
    and users upload raw photos; a second dataset (IDRiD) is another camera again.
    """
    parts = table.parts[idx] if table.parts is not None else np.zeros(len(idx), dtype=np.int64)
    w, h = table.sizes[idx, 0], table.sizes[idx, 1]
    look = np.where((w == h) & (w <= 256), "crop", "photo")
    return np.asarray([f"{p}:{k}" for p, k in zip(parts, look, strict=True)])


def domain_sample_weights(domains: np.ndarray, power: float) -> torch.Tensor:
    """Per-row draw weights giving each domain a share proportional to ``n_domain ** power``.

    ``power`` 1 keeps the natural mix, 0 draws every domain equally; in between (0.5) the
    few raw photos are seen far more often than their count alone would give, without
    letting a 300-photo dataset be repeated as often as a 4,000-image one.
    """
    names, inverse, counts = np.unique(domains, return_inverse=True, return_counts=True)
    share = counts.astype(np.float64) ** power
    share /= share.sum()
    return torch.as_tensor(share[inverse] / counts[inverse])


def class_weights(labels: np.ndarray, k: int, power: float = 1.0) -> torch.Tensor:
    """``(N / (K * count_c)) ** power`` per class (sklearn's "balanced" at power 1); 0 for absent classes.

    ``power`` < 1 tempers the weights: on EyePACS grades (74% grade 0, 1.8% grade 4) full inverse
    frequency weighs grade 4 about 40x grade 0, and a model from scratch first collapses onto
    the rarest grades; square-root weights (power 0.5) keep the ratio near 6x.
    """
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (max(1, (counts > 0).sum()) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w**power, dtype=torch.float32)


class AugmentedBatches:
    """Per-image random augmentation through a ``DataLoader``; reseeded every epoch.

    Yields ``(x uint8 (B, C, S, S), y (B,))`` like :class:`training.engine.TensorBatches`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        spec: PreprocessSpec,
        strength: str,
        batch_size: int,
        *,
        seed: int,
        weights: torch.Tensor | None = None,
        num_workers: int = 0,
        num_samples: int | None = None,
    ) -> None:
        self.dataset = PreparedDataset(images, labels, transform=augmentations(spec, strength))
        self.batch_size = batch_size
        self.seed = seed
        self.weights = weights
        self.num_workers = num_workers
        self.num_samples = num_samples or len(self.dataset)  # draws per epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if n % self.batch_size == 1 and n > 1 else math.ceil(n / self.batch_size)

    def __iter__(self):  # noqa: ANN204 - a generator of batches
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = self.num_samples
        if self.weights is not None:
            sampler: Any = torch.utils.data.WeightedRandomSampler(self.weights.double(), n, generator=g)
        elif n != len(self.dataset):
            sampler = torch.utils.data.RandomSampler(self.dataset, num_samples=n, replacement=True, generator=g)
        else:
            sampler = torch.utils.data.RandomSampler(self.dataset, generator=g)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=n % self.batch_size == 1 and n > 1,  # a batch of 1 breaks BatchNorm
            persistent_workers=False,
        )
        yield from loader


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
) -> FitResult:
    """Train on ``train_idx``, early-stop on ``val_idx``, score ``test_idx``; write checkpoints.

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
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = bundle.spec
    table = bundle.table
    k = len(table.class_names)
    seed = cfg["seed"]
    seed_everything(seed)
    threads = set_threads(cfg["threads"])
    device = resolve_device(cfg["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    logger.info("device %s, %d CPU threads", device, threads)

    # ---- training split: label fraction, then imbalance handling (train rows only)
    train_idx = np.asarray(train_idx)
    if cfg["label_fraction"] is not None and cfg["label_fraction"] < 1:
        keep = label_fraction_indices(table.labels[train_idx], cfg["label_fraction"], seed=cfg["data"]["seed"])
        logger.info("label_fraction=%g: %d of %d training images", cfg["label_fraction"], len(keep), len(train_idx))
        train_idx = train_idx[keep]
    tr_x = bundle.images[torch.as_tensor(train_idx)]
    tr_y = table.labels[train_idx]
    imbalance = cfg["imbalance"]
    if imbalance == "smote":
        tr_x, tr_y = smote_resample(tr_x, tr_y, seed=seed)
    weights = class_weights(tr_y, k, cfg["class_weight_power"]) if imbalance == "class_weights" else None
    sample_w = None
    if imbalance == "weighted_sampler":
        counts = np.bincount(tr_y, minlength=k).astype(np.float64)
        sample_w = torch.as_tensor(1.0 / counts[tr_y])
    if cfg["domain_balance"] is not None and imbalance != "smote":
        domains = image_domains(table, train_idx)
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
    bs = cfg["batch_size"]
    if cfg["augment"] == "none":
        train_loader: Any = TensorBatches(tr_x, tr_y, bs, shuffle=True, seed=seed, weights=sample_w)
    else:
        train_loader = AugmentedBatches(
            tr_x,
            tr_y,
            spec,
            cfg["augment"],
            bs,
            seed=seed,
            weights=sample_w,
            num_workers=cfg["num_workers"],
            num_samples=cfg["epoch_images"],
        )
    val_y = table.labels[val_idx]
    val_loader = TensorBatches(bundle.images[torch.as_tensor(val_idx)], val_y, cfg["eval_batch_size"])

    # ---- model, optimiser, schedule
    model, model_args, init = build_for_training(cfg, spec, k)
    if init_backbone is not None:
        model.backbone.load_state_dict(init_backbone)
        init["backbone"] = "simclr"
    if freeze_backbone:
        freeze_module(model.backbone)
    model.to(device)
    channels_last = bool(cfg["channels_last"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg["epochs"]))
        if cfg["scheduler"] == "cosine"
        else None
    )
    criterion = nn.CrossEntropyLoss(
        weight=weights.to(device) if weights is not None else None, label_smoothing=cfg["label_smoothing"]
    )
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "%s: %d parameters (%d trainable), %d training images, batch %d, %d epochs",
        cfg["model"]["arch"],
        sum(p.numel() for p in model.parameters()),
        n_trainable,
        len(tr_y),
        bs,
        cfg["epochs"],
    )

    history: list[dict[str, Any]] = []
    start_epoch, best, best_epoch, bad_epochs = 1, None, 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        st = resume["extra"]["resume"]
        optimizer.load_state_dict(st["optimizer"])
        if scheduler is not None and st.get("scheduler"):
            scheduler.load_state_dict(st["scheduler"])
        start_epoch = int(st["epoch"]) + 1
        best = tuple(st["best"]) if st.get("best") else None
        best_epoch, bad_epochs = int(st["best_epoch"]), int(st["bad_epochs"])
        history = list(st["history"])
        best_path = out / "best.pt"
        if best_path.is_file():
            best_state = checkpoint.dequantize_state(checkpoint.read(best_path))
        logger.info("resumed from epoch %d (best epoch %d)", start_epoch - 1, best_epoch)

    es = cfg["early_stopping"]
    base_meta = _base_meta(cfg, bundle, model_args, init, data_extra)
    for epoch in range(start_epoch, cfg["epochs"] + 1):
        torch.manual_seed(seed + epoch)  # augmentation/dropout RNG: same stream after a resume
        lr = optimizer.param_groups[0]["lr"]
        stats = _train_epoch(model, train_loader, optimizer, criterion, device, spec, epoch, cfg, channels_last)
        if scheduler is not None:
            scheduler.step()
        logits, _ = predict_logits(model, val_loader, device, spec, amp=cfg["amp"], channels_last=channels_last)
        v_loss = nll(logits, val_y)
        v_pred = logits.argmax(1)
        with quiet_sklearn():  # tiny val sets miss classes the model predicts
            v_bal = float(balanced_accuracy_score(val_y, v_pred))
        row = {
            "epoch": epoch,
            "train_loss": stats["loss"],
            "train_acc": stats["acc"],
            "val_loss": v_loss,
            "val_accuracy": float((v_pred == val_y).mean()),
            "val_balanced_accuracy": v_bal,
            "lr": lr,
            "seconds": stats["seconds"],
            "images_per_s": stats["images_per_s"],
        }
        history.append(row)
        v_score = v_bal
        if es["metric"] == "val_referable_auc":
            v_score = referable_auc(logits, val_y, table.class_names)
            row["val_referable_auc"] = v_score
        improved = _better(es["metric"], v_score, v_loss, best)
        if improved:
            best, best_epoch, bad_epochs = (v_score, v_loss), epoch, 0
            best_state = {k_: v.detach().clone() for k_, v in _plain_state(model).items()}
            checkpoint.save(
                out / "best.pt",
                model,
                **base_meta,
                metrics={"val": {"loss": v_loss, "balanced_accuracy": v_bal}, "best_epoch": epoch, "final": False},
            )
        else:
            bad_epochs += 1
        logger.info(
            "epoch %d/%d train loss %.4f acc %.3f | val loss %.4f acc %.3f bal-acc %.3f | %.0f img/s %.1fs%s",
            epoch,
            cfg["epochs"],
            stats["loss"],
            stats["acc"],
            v_loss,
            row["val_accuracy"],
            v_bal,
            stats["images_per_s"],
            stats["seconds"],
            " *" if improved else "",
        )
        if keep_last:
            resume_state = {
                "epoch": epoch,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "best": list(best) if best else None,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "history": to_plain(history),
            }
            checkpoint.save(
                out / "last.pt", model, **base_meta, metrics={"epoch": epoch}, extra={"resume": resume_state}
            )
        _write_history(out / "history.csv", history)
        if es["patience"] and bad_epochs >= es["patience"]:
            logger.info("early stopping: no improvement of %s for %d epochs", es["metric"], bad_epochs)
            break

    # ---- best epoch: calibrate on val, score val and test, final checkpoint
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    val_logits, _ = predict_logits(model, val_loader, device, spec, amp=cfg["amp"], channels_last=channels_last)
    calibration = fit_temperature(val_logits, val_y) if cfg["calibrate"] else {"temperature": 1.0, "method": "none"}
    t = float(calibration["temperature"])
    groups = table.groups
    n_boot = cfg["n_bootstrap"]
    val_probs = softmax(val_logits, t)
    metrics: dict[str, Any] = {
        "val": compute_metrics(val_probs, val_y, table.class_names, groups=groups[val_idx], n_bootstrap=n_boot),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "early_stopping_metric": es["metric"],
    }
    test_probs = None
    if test_idx is not None and len(test_idx):
        test_loader = TensorBatches(
            bundle.images[torch.as_tensor(test_idx)], table.labels[test_idx], cfg["eval_batch_size"]
        )
        test_logits, test_y = predict_logits(
            model, test_loader, device, spec, amp=cfg["amp"], channels_last=channels_last
        )
        test_probs = softmax(test_logits, t)
        metrics["test"] = compute_metrics(
            test_probs, test_y, table.class_names, groups=groups[test_idx], n_bootstrap=n_boot
        )
    metrics.update(extra_metrics or {})
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
    best_path = checkpoint.save(
        out / "best.pt",
        model,
        **base_meta,
        metrics=to_plain(metrics),
        calibration=to_plain(calibration),
        half=cfg["half"],
    )
    config_mod.save_config(cfg, out / "config.yaml")
    if history:
        _write_history(out / "history.csv", history)
        training_curves_png(history, out / "training_curves.png")
    logger.info("saved %s (best epoch %d, T=%.3f)", best_path, best_epoch, t)
    return FitResult(
        model=model,
        best_path=best_path,
        best_epoch=best_epoch,
        calibration=calibration,
        metrics=metrics,
        val_probs=val_probs,
        test_probs=test_probs,
        history=history,
        model_args=model_args,
    )


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
            progress=cfg["progress"],
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


# ----------------------------------------------------------------------------- CLI


def setup_logging(out: Path | None = None) -> None:
    """INFO to stderr (and ``out/train.log``); idempotent across calls in one process."""
    root = logging.getLogger()
    if not any(getattr(h, "_retina", False) for h in root.handlers):
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        h._retina = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.INFO)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for h in list(root.handlers):
            if getattr(h, "_retina_file", False):
                root.removeHandler(h)
                h.close()
        fh = logging.FileHandler(out / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh._retina_file = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    config_mod.add_common_args(p)
    p.add_argument("--resume", help="continue from a last.pt (its config is the base unless --config is given)")
    return p


def run(cfg: dict[str, Any], resume: dict[str, Any] | None = None) -> Path:
    """Train from a resolved config; returns the output directory."""
    out = Path(cfg["out"] or Path("runs") / (cfg["name"] or "run"))
    cfg["out"] = str(out)
    setup_logging(out)
    logger.info("config %s -> %s", cfg["name"], out)
    t0 = time.perf_counter()
    if cfg["simclr"] is not None:
        from training import simclr

        simclr.run(cfg, out)
    else:
        bundle = prepare_data(cfg)
        s = bundle.splits
        fit(cfg, bundle, out, train_idx=s["train"], val_idx=s["val"], test_idx=s["test"], resume=resume)
    logger.info("done in %.1fs", time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        resume = None
        base = None
        if args.resume:
            resume = checkpoint.read(args.resume)
            if "resume" not in resume.get("extra", {}):
                raise ConfigError(f"{args.resume} has no resume state; pass a last.pt")
            if not args.config:
                base = resume["config"]
            if not args.out:
                args.out = str(Path(args.resume).parent)
        elif not args.config:
            raise ConfigError("pass --config (or --resume)")
        cfg = config_mod.from_args(args, base)
        if resume is not None and cfg["simclr"] is not None:
            raise ConfigError("--resume is supported for supervised runs only")
        run(cfg, resume)
    except (ConfigError, DatasetError, checkpoint.CheckpointError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
