"""What one run trains with: the training split as drawn each epoch, the fixed evaluation splits, and the
:class:`Trainer` (model, optimiser, schedule, loss) built from the config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from retina.labels import DR_GRADES
from training.config import ConfigError, TrainConfig
from training.data.bundle import DataBundle
from training.data.loaders import AugmentedBatches, TensorBatches
from training.data.sampling import (
    class_weights,
    domain_sample_weights,
    image_domains,
    prevalence_weights,
    smote_resample,
)
from training.data.splits import label_fraction_indices
from training.fit.distributed import SINGLE, Dist
from training.fit.model import build_for_training, freeze_module, make_optimizer

logger = logging.getLogger("training.train")


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


def _positive(labels: np.ndarray, class_names: tuple[str, ...]) -> np.ndarray:
    """``(N,)`` bool: referable DR (grade >= 2) for 5-grade models, the second class for binary ones."""
    if tuple(class_names) == DR_GRADES:
        return np.asarray(labels) >= 2
    if len(class_names) == 2:
        return np.asarray(labels) == 1
    raise ConfigError(f"domain_prevalence needs a 5-grade DR or a binary model, not {class_names}")


def _sample_weights(cfg: TrainConfig, bundle: DataBundle, train_idx: np.ndarray, tr_y: np.ndarray) -> Any:
    """Per-draw weights ``(N,)`` for ``weighted_sampler`` and/or ``domain_balance``; ``None`` = uniform."""
    imbalance = cfg.imbalance
    sample_w = None
    if imbalance == "weighted_sampler":
        counts = np.bincount(tr_y, minlength=len(bundle.table.class_names)).astype(np.float64)
        sample_w = torch.as_tensor(1.0 / counts[tr_y])
    if cfg.domain_balance is not None and imbalance != "smote":
        domains = image_domains(bundle.table, train_idx)
        dom_w = domain_sample_weights(domains, float(cfg.domain_balance))
        if cfg.domain_prevalence is not None:
            positive = _positive(tr_y, bundle.table.class_names)
            dom_w = dom_w * prevalence_weights(domains, positive, float(cfg.domain_prevalence))
            logger.info(
                "domain_prevalence=%s: positive share per domain before %s",
                cfg.domain_prevalence,
                {str(d): round(float(positive[domains == d].mean()), 3) for d in np.unique(domains)},
            )
        sample_w = dom_w if sample_w is None else dom_w * sample_w
        names, counts = np.unique(domains, return_counts=True)
        share = {str(d): round(float(dom_w[domains == d].sum() / dom_w.sum()), 3) for d in names}
        logger.info(
            "domain_balance=%s: images %s, share of draws %s",
            cfg.domain_balance,
            dict(zip(names.tolist(), counts.tolist(), strict=True)),
            share,
        )
    return sample_w


def load_train(cfg: TrainConfig, bundle: DataBundle, train_idx: np.ndarray, dist: Dist = SINGLE) -> TrainData:
    """Label fraction, then imbalance handling (training rows only), then the epoch iterator.

    Under torchrun every rank builds the same iterator (same rows, weights and seed) and
    iterates its own shard of each epoch's draw.
    """
    table, seed = bundle.table, cfg.seed
    train_idx = np.asarray(train_idx)
    if cfg.label_fraction is not None and cfg.label_fraction < 1:
        keep = label_fraction_indices(table.labels[train_idx], cfg.label_fraction, seed=cfg.data.seed)
        logger.info("label_fraction=%g: %d of %d training images", cfg.label_fraction, len(keep), len(train_idx))
        train_idx = train_idx[keep]
    tr_x = bundle.images[torch.as_tensor(train_idx)]
    tr_y = table.labels[train_idx]
    if cfg.imbalance == "smote":
        tr_x, tr_y = smote_resample(tr_x, tr_y, seed=seed)
    weights = None
    if cfg.imbalance == "class_weights":
        weights = class_weights(tr_y, len(table.class_names), cfg.class_weight_power)
    sample_w = _sample_weights(cfg, bundle, train_idx, tr_y)
    bs = cfg.batch_size
    if cfg.augment == "none":
        loader: Any = TensorBatches(
            tr_x, tr_y, bs, shuffle=True, seed=seed, weights=sample_w, num_replicas=dist.world_size, rank=dist.rank
        )
    else:
        loader = AugmentedBatches(
            tr_x,
            tr_y,
            bundle.spec,
            cfg.augment,
            bs,
            seed=seed,
            weights=sample_w,
            num_workers=cfg.num_workers,
            num_samples=cfg.epoch_images,
            num_replicas=dist.world_size,
            rank=dist.rank,
        )
    return TrainData(loader=loader, n_images=len(tr_y), class_weights=weights)


def load_eval(cfg: TrainConfig, bundle: DataBundle, idx: np.ndarray) -> EvalData:
    """Rows ``idx`` as fixed batches of ``eval_batch_size``."""
    y = bundle.table.labels[idx]
    return EvalData(idx, TensorBatches(bundle.images[torch.as_tensor(idx)], y, cfg.eval_batch_size), y)


def build_trainer(
    cfg: TrainConfig,
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
    channels_last = bool(cfg.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if dist.enabled:
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(cfg, net)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs))
        if cfg.scheduler == "cosine"
        else None
    )
    w = train.class_weights
    criterion = nn.CrossEntropyLoss(weight=w.to(device) if w is not None else None, label_smoothing=cfg.label_smoothing)
    logger.info(
        "%s: %d parameters (%d trainable), %d training images, batch %d x %d processes, %d epochs",
        cfg.model.arch,
        sum(p.numel() for p in net.parameters()),
        sum(p.numel() for p in net.parameters() if p.requires_grad),
        train.n_images,
        cfg.batch_size,
        dist.world_size,
        cfg.epochs,
    )
    return Trainer(model, net, optimizer, scheduler, criterion, device, channels_last, model_args, init, dist)
