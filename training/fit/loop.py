"""The training loop, torchvision-reference style: :func:`train_one_epoch` over prepared batches.

Batches arrive as prepared ``uint8`` tensors ``(B, C, S, S)`` (:mod:`training.data.loaders`)
and the loop applies ``retina.preprocessing.tail(spec)`` on the device
(:func:`training.evaluate.predict.to_model_input`), i.e. exactly the normalisation that
serving applies to an upload. Keeping images uint8 until then means 4x less memory and
host-to-device traffic than float tensors. Named ``loop`` so that it is not confused with
``retina.engine`` (the serving runtimes).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retina.preprocessing import PreprocessSpec
from training.data.loaders import Batch
from training.evaluate.predict import autocast, to_model_input


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for repeatable runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: torch.device,
    spec: PreprocessSpec,
    *,
    epoch: int = 0,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = True,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns ``{"loss", "acc", "images", "seconds", "images_per_s"}``.

    ``loss`` is the per-image mean; ``acc`` the running training accuracy (on augmented,
    possibly resampled images, so only a progress signal).
    """
    model.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    # Accumulate on the device and synchronise once per epoch, not once per batch.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False, mininterval=1)
    for step, (xb, yb) in enumerate(bar):
        x = to_model_input(xb, spec, device, channels_last=channels_last)
        y = yb.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        n = y.shape[0]
        total_loss += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == y).sum()
        seen += n
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    dt = time.perf_counter() - t0
    if seen == 0:
        return {"loss": float("nan"), "acc": float("nan"), "images": 0, "seconds": dt, "images_per_s": 0.0}
    return {
        "loss": float(total_loss) / seen,
        "acc": int(correct) / seen,
        "images": seen,
        "seconds": dt,
        "images_per_s": seen / dt if dt > 0 else float("inf"),
    }
