"""SimCLR (Chen et al. 2020): contrastive pretraining, then label-efficient fine-tuning.

Run by :func:`training.fit.pipeline.train` (``python -m training.train``) when the config has a ``simclr:`` section:

1. **Pretrain** the ``simclr`` architecture (``retina.models.SimCLRClassifier``: ResNet
   ``backbone`` + ``projection_head``) on the *train split* images, labels unused. Each
   image gives two random views (torchvision v2 ops on the prepared uint8 tensor, then the
   served ``tail(spec)``); the NT-Xent loss comes from ``pytorch_metric_learning``.
2. **Export only the backbone** to ``OUT/backbone.pt`` (the projection head is discarded).
3. **Fine-tune** (or linear-probe with ``simclr.linear_probe: true``) once per
   ``simclr.label_fractions`` entry on a stratified, seeded fraction of the train labels,
   with the regular supervised loop (:func:`training.fit.run.fit`): ``OUT/frac_<f>/best.pt``
   are normal classifier checkpoints (arch ``simclr``).
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from pytorch_metric_learning.losses import NTXentLoss
from torchvision.transforms import v2
from tqdm.auto import tqdm

from retina.models import build_model
from retina.preprocessing import PreprocessSpec
from retina.runtime import resolve_device
from retina.serialize import atomic_write, to_plain
from training.config import ModelConfig, TrainConfig
from training.data.bundle import prepare_data
from training.evaluate.predict import set_threads, to_model_input
from training.fit.loop import seed_everything
from training.fit.run import fit

logger = logging.getLogger(__name__)

BACKBONE_FORMAT = "retinascope-simclr-backbone"


def simclr_views(spec: PreprocessSpec, crop_scale_min: float = 0.3, blur_p: float = 0.5) -> v2.Compose:
    """Random SimCLR view of a prepared uint8 ``(C, S, S)`` tensor; output uint8, same shape.

    Crop + flip + brightness/contrast (colour jitter and random grayscale on RGB) + blur;
    no vertical flip for OCT, whose B-scans have a canonical up.
    """
    s = spec.size
    ops: list[Any] = [
        v2.RandomResizedCrop(s, scale=(crop_scale_min, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if spec.channels == 3:
        ops += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
    else:
        ops += [v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8)]
    k = max(3, (s // 10) | 1)  # odd kernel about a tenth of the image, as in the paper
    ops.append(v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=blur_p))
    return v2.Compose(ops)


class TwoViews(torch.utils.data.Dataset):
    """Unlabelled prepared images ``(N, C, S, S)`` uint8 -> two random views per item."""

    def __init__(self, images: torch.Tensor, transform: v2.Transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return self.transform(x), self.transform(x)


def pretrain(
    cfg: TrainConfig,
    images: torch.Tensor,
    spec: PreprocessSpec,
    out: Path,
    *,
    data_meta: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Contrastive pretraining on uint8 ``images (N, C, S, S)``; returns the backbone state dict.

    Writes ``out/backbone.pt`` (backbone weights + meta) and ``out/simclr_history.csv``.
    """
    sc = cfg.simclr
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model = build_model(
        "simclr",
        encoder=sc.encoder,
        in_channels=spec.channels,
        num_classes=2,  # the head is unused while pretraining
        proj_dim=sc.proj_dim,
        proj_hidden=sc.proj_hidden,
    ).to(device)
    channels_last = bool(cfg.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [*model.backbone.parameters(), *model.projection_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=sc.lr, weight_decay=sc.weight_decay)
    epochs = sc.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    loss_fn = NTXentLoss(temperature=sc.temperature)
    n = len(images)
    bs = min(sc.batch_size, n)
    if bs < 2:
        raise ValueError("SimCLR needs at least 2 training images (negatives come from the batch)")
    dataset = TwoViews(images, simclr_views(spec, sc.crop_scale_min, sc.blur_p))
    history = []
    logger.info("SimCLR pretraining: %d images, batch %d, %d epochs, T=%.2f", n, bs, epochs, sc.temperature)
    for epoch in range(1, epochs + 1):
        torch.manual_seed(cfg.seed + epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=bs,
            shuffle=True,
            drop_last=n % bs == 1,  # a lone image has no negatives (and breaks BatchNorm)
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
        )
        model.train()
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        for x1, x2 in tqdm(loader, desc=f"simclr {epoch}", leave=False, disable=not cfg.progress, mininterval=1):
            x = to_model_input(torch.cat([x1, x2]), spec, device, channels_last=channels_last)
            b = x1.shape[0]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                z = model.embed(x)
            # Views i and i+b share a label: they are the positive pair; all others are negatives.
            loss = loss_fn(z.float(), torch.arange(b, device=device).repeat(2))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * b
            seen += b
        scheduler.step()
        dt = time.perf_counter() - t0
        row = {"epoch": epoch, "loss": total / max(1, seen), "seconds": dt, "images_per_s": seen / dt if dt else 0.0}
        history.append(row)
        logger.info("simclr epoch %d/%d NT-Xent %.4f (%.0f img/s)", epoch, epochs, row["loss"], row["images_per_s"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "simclr_history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "loss", "seconds", "images_per_s"])
        w.writeheader()
        w.writerows(history)
    state = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    save_backbone(out / "backbone.pt", state, cfg, spec, history, data_meta or {})
    return state


def save_backbone(
    path: Path,
    state: dict[str, torch.Tensor],
    cfg: TrainConfig,
    spec: PreprocessSpec,
    history: list[dict[str, Any]],
    data_meta: dict[str, Any],
) -> Path:
    """Backbone-only export (``weights_only``-loadable): the projection head is not kept."""
    sc = cfg.simclr
    payload = {
        "format": BACKBONE_FORMAT,
        "encoder": sc.encoder,
        "in_channels": spec.channels,
        "preprocess": spec.to_dict(),
        "simclr": to_plain(asdict(sc)),
        "history": to_plain(history),
        "data": to_plain(data_meta),
        "state_dict": state,
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    logger.info("exported SimCLR backbone to %s", path)
    return path


def load_backbone(path: str | Path, spec: PreprocessSpec, encoder: str) -> dict[str, torch.Tensor]:
    """Read ``backbone.pt``; refuses a file made for another encoder or preprocessing."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != BACKBONE_FORMAT:
        raise ValueError(f"{path} is not a SimCLR backbone export")
    if payload["encoder"] != encoder or PreprocessSpec.from_dict(payload["preprocess"]) != spec:
        raise ValueError(f"{path} was pretrained for {payload['encoder']} / {payload['preprocess']}, not this config")
    return payload["state_dict"]


def run(cfg: TrainConfig, out: Path) -> list[Path]:
    """Pretrain (unless ``simclr.backbone`` is given), then fine-tune per label fraction."""

    sc = cfg.simclr
    bundle = prepare_data(cfg)
    train_idx = bundle.splits["train"]
    if sc.backbone:
        state = load_backbone(sc.backbone, bundle.spec, sc.encoder)
        logger.info("using pretrained backbone %s", sc.backbone)
    else:
        state = pretrain(cfg, bundle.images[torch.as_tensor(train_idx)], bundle.spec, out, data_meta=bundle.meta)
    paths = []
    for frac in sc.label_fractions:
        sub = out / f"frac_{frac:g}"
        c = replace(
            cfg,
            label_fraction=float(frac),
            model=ModelConfig(
                arch="simclr", args={"encoder": sc.encoder, "proj_dim": sc.proj_dim, "proj_hidden": sc.proj_hidden}
            ),
            out=str(sub),
        )
        logger.info("fine-tuning on %.3g of the training labels -> %s", frac, sub)
        res = fit(
            c,
            bundle,
            sub,
            train_idx=train_idx,
            val_idx=bundle.splits["val"],
            test_idx=bundle.splits["test"],
            init_backbone=state,
            freeze_backbone=bool(sc.linear_probe),
            data_extra={
                "simclr": {
                    "pretrained_on": "train split, labels unused",
                    "pretrain_images": int(len(train_idx)),
                    "epochs": sc.epochs,
                    "linear_probe": bool(sc.linear_probe),
                    "backbone": str(sc.backbone or out / "backbone.pt"),
                }
            },
        )
        paths.append(res.best_path)
    return paths
