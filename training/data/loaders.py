"""Batches of prepared uint8 images ``(B, C, S, S)`` with labels ``(B,)``: the training loop's input.

Fast path: without augmentation, :class:`TensorBatches` slices shuffled index ranges of
the in-memory tensor, so an OCTMNIST epoch (97k images) costs no per-sample Python
(``Dataset.__getitem__`` + collate would take longer than the model itself at 28 px).
With augmentation, :class:`AugmentedBatches` runs a regular ``DataLoader`` over
``PreparedDataset`` that applies the random ops per image. Both reshuffle with
``Generator(seed + epoch)`` and, under torchrun, iterate this rank's :func:`shard_indices`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from retina.preprocessing import PreprocessSpec, augmentations
from training.data.pixels import PreparedDataset, check_prepared

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


class AugmentedBatches:
    """Per-image random augmentation through a ``DataLoader``; reseeded every epoch.

    Yields ``(x uint8 (B, C, S, S), y (B,))`` like :class:`TensorBatches`. Each
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
