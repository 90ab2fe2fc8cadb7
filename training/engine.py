"""The training loop, torchvision-reference style: ``train_one_epoch`` and ``evaluate``.

Batches arrive as prepared ``uint8`` tensors ``(N, C, S, S)`` (what
``training.datasets.load_prepared`` returns) and the loop applies
``retina.preprocessing.tail(spec)`` on the device, i.e. exactly the normalisation that
serving applies to an upload. Keeping images uint8 until then means 4x less memory and
host-to-device traffic than float tensors.

Fast path: without augmentation, :class:`TensorBatches` slices shuffled index ranges of
the in-memory tensor, so an OCTMNIST epoch (97k images) costs no per-sample Python
(``Dataset.__getitem__`` + collate would take longer than the model itself at 28 px).
With augmentation, a regular ``DataLoader`` over ``PreparedDataset`` applies the random
ops per image.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retina.preprocessing import PreprocessSpec, augmentations, tail
from retina.runtime import usable_cores
from training.datasets import PreparedDataset, check_prepared

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def shard_indices(order: torch.Tensor, num_replicas: int = 1, rank: int = 0) -> torch.Tensor:
    """This rank's part of one epoch's draw ``order`` ``(N,)``: ``order[rank::num_replicas]``, padded.

    The split is ``DistributedSampler``'s (``shuffle=False`` over the positions of the draw):
    every rank gets ``ceil(N / num_replicas)`` positions, disjoint, together the whole draw
    (the first few repeated as padding so that all ranks run the same number of steps).
    The draw itself (shuffled, weighted or oversampled) is made identically on every rank
    from the shared seed, so sharding it keeps the sampling policy exactly.
    """
    if num_replicas == 1:
        return order
    positions = torch.utils.data.DistributedSampler(
        range(len(order)), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False
    )
    return order[torch.as_tensor(list(positions), dtype=torch.long)]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for repeatable runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(n: int) -> int:
    """Set torch's intra-op threads (``0`` = one per core this process may use); returns it."""
    if n <= 0:
        n = usable_cores()
    torch.set_num_threads(n)
    return n


class TensorBatches:
    """Re-iterable batches ``(x uint8 (B, C, S, S), y int64 (B,))`` over in-memory tensors.

    Each iteration reshuffles with ``torch.Generator(seed + epoch)``, so a resumed run sees
    the same order as an uninterrupted one. ``weights`` (per-sample, e.g. inverse class
    frequency) switch to sampling with replacement, ``len(images)`` samples per epoch, the
    in-memory equivalent of ``WeightedRandomSampler``. With ``num_replicas > 1`` (DDP) each
    rank iterates its :func:`shard_indices` part of that same epoch order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.images, self.labels = check_prepared(images, labels)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.weights = weights
        self.drop_last = drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = math.ceil(len(self.images) / self.num_replicas)  # this rank's share of the draw
        # A trailing batch of 1 breaks BatchNorm in train mode; drop it rather than crash.
        if self.drop_last or (self.shuffle and n % self.batch_size == 1 and n > 1):
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.images)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights.double(), n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        return shard_indices(order, self.num_replicas, self.rank)

    def __iter__(self) -> Iterator[Batch]:
        order = self._order()
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            # index_select on a contiguous uint8 tensor: one memcpy-like kernel per batch.
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)


def to_model_input(
    x: torch.Tensor, spec: PreprocessSpec, device: torch.device, *, channels_last: bool = False
) -> torch.Tensor:
    """uint8 ``(N, C, S, S)`` -> normalised float32 on ``device`` via the served ``tail(spec)``.

    The uint8 batch is moved first (4x fewer bytes), then normalised on the device.
    """
    x = x.to(device, non_blocking=True)
    x = tail(spec)(x).as_subclass(torch.Tensor)  # plain tensor: no tv_tensors dispatch in the model
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


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
        with _autocast(device, amp):
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


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    spec: PreprocessSpec,
    *,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, K)`` float32 and labels ``(N,)`` int64 for every batch of ``loader``."""
    model.eval()
    outs, labels = [], []
    for x, y in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False, mininterval=1):
        x = to_model_input(x, spec, device, channels_last=channels_last)
        with _autocast(device, amp):
            outs.append(model(x).float().cpu())
        labels.append(torch.as_tensor(y))
    if not outs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    return torch.cat(outs).numpy(), torch.cat(labels).long().numpy()


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``: ``(N, K)`` -> probabilities ``(N, K)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    spec: PreprocessSpec,
    *,
    temperature: float = 1.0,
    **kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, K)`` in ``[0, 1]`` (rows sum to 1) and labels ``(N,)``."""
    logits, labels = predict_logits(model, loader, device, spec, **kw)
    if logits.size == 0:
        return logits, labels
    return softmax(logits, temperature), labels


class AugmentedBatches:
    """Per-image random augmentation through a ``DataLoader``; reseeded every epoch.

    Yields ``(x uint8 (B, C, S, S), y (B,))`` like :class:`training.engine.TensorBatches`. Each
    epoch draws ``num_samples`` indices (weighted by ``weights``, or with replacement when
    that differs from the dataset size, i.e. ``epoch_images``) with ``Generator(seed + epoch)``;
    with ``num_replicas > 1`` (DDP) every rank makes that same draw and iterates its
    :func:`shard_indices` part.
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
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.dataset = PreparedDataset(images, labels, transform=augmentations(spec, strength))
        self.num_replicas, self.rank = num_replicas, rank
        self.batch_size = batch_size
        self.seed = seed
        self.weights = weights
        self.num_workers = num_workers
        self.num_samples = num_samples or len(self.dataset)  # draws per epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _per_rank(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if n % self.batch_size == 1 and n > 1 else math.ceil(n / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's dataset indices for the current epoch, in order: ``(ceil(num_samples / num_replicas),)``."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = self.num_samples
        if self.weights is not None:
            sampler: Any = torch.utils.data.WeightedRandomSampler(self.weights.double(), n, generator=g)
        elif n != len(self.dataset):
            sampler = torch.utils.data.RandomSampler(self.dataset, num_samples=n, replacement=True, generator=g)
        else:
            sampler = torch.utils.data.RandomSampler(self.dataset, generator=g)
        return shard_indices(torch.as_tensor(list(sampler), dtype=torch.long), self.num_replicas, self.rank)

    def __iter__(self):  # noqa: ANN204 - a generator of batches
        n = self._per_rank()
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.indices().tolist(),
            num_workers=self.num_workers,
            drop_last=n % self.batch_size == 1 and n > 1,  # a batch of 1 breaks BatchNorm
            persistent_workers=False,
        )
        yield from loader
