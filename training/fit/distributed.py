"""Training on several processes with ``torchrun``: the process group, and what each rank does.

    torchrun --nproc_per_node 4 -m training.train --config C --data D --out O

``torchrun`` starts one process per GPU (or per CPU slot) and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`from_env`
reads them and :func:`init` joins the group (NCCL on CUDA, gloo on CPU). The model is
wrapped in ``DistributedDataParallel``; each rank trains on its own disjoint shard of the
epoch's draw (:func:`training.data.loaders.shard_indices`); rank 0 alone evaluates, logs, shows
progress bars and writes checkpoints (of the unwrapped model, so a checkpoint is the same
self-describing file a single-process run writes). Without those variables everything here
is a no-op and a run is the plain single-process one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td

from retina.runtime import usable_cores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that evaluates, logs and writes files."""
        return self.rank == 0


SINGLE = Dist()


def from_env(env: Mapping[str, str] = os.environ) -> Dist:
    """The ranks ``torchrun`` set in the environment; :data:`SINGLE` when it did not start this process."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return SINGLE
    world = int(env["WORLD_SIZE"])
    dist = Dist(
        rank=int(env["RANK"]),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", 0)),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
    )
    if not 0 <= dist.rank < world or not 0 <= dist.local_rank < dist.local_world_size:
        raise ValueError(f"inconsistent torchrun environment: {dist}")
    return dist


def init(dist: Dist, device: torch.device) -> torch.device:
    """Join the process group (NCCL for CUDA, gloo for CPU); returns this rank's device.

    On CUDA each process drives the GPU of its ``LOCAL_RANK``. Idempotent (a second call, as
    from a test that runs two fits in one process, reuses the group).
    """
    if not dist.enabled:
        return device
    if device.type == "cuda":
        if dist.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {dist.local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                "use --nproc_per_node <= the GPUs of this node"
            )
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not td.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # A generous timeout: rank 0 alone evaluates after each epoch while the others wait.
        td.init_process_group(backend, rank=dist.rank, world_size=dist.world_size, timeout=_dt.timedelta(hours=1))
        logger.info("process group: %s, rank %d of %d on %s", backend, dist.rank, dist.world_size, device)
    return device


def threads_per_process(requested: int, dist: Dist) -> int:
    """Torch intra-op threads: ``requested``, or (``0``) this node's cores shared by its processes."""
    if requested > 0 or not dist.enabled:
        return requested
    return max(1, usable_cores() // dist.local_world_size)


def shutdown() -> None:
    """Leave the process group (end of a run)."""
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.enabled:
        td.barrier()


@contextlib.contextmanager
def main_first(dist: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills the prepared-image cache), then the others (read it)."""
    if not dist.is_main:
        barrier(dist)
    yield
    if dist.is_main:
        barrier(dist)


def broadcast(value: Any, dist: Dist) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object, e.g. the early-stopping verdict)."""
    if not dist.enabled:
        return value
    box = [value]
    td.broadcast_object_list(box, src=0)
    return box[0]


def reduce_epoch_stats(stats: dict[str, float], dist: Dist, device: torch.device) -> dict[str, float]:
    """:func:`training.fit.loop.train_one_epoch` statistics of all ranks together.

    Loss and accuracy are averaged over every image any rank saw, ``images`` summed, and
    ``seconds`` is the slowest rank's (the epoch lasts until the last one is done).
    """
    if not dist.enabled:
        return stats
    n = float(stats["images"])
    loss, acc = (stats["loss"], stats["acc"]) if n else (0.0, 0.0)  # NaN on a rank that saw nothing
    sums = torch.tensor([loss * n, acc * n, n], dtype=torch.float64, device=device)
    slowest = torch.tensor([stats["seconds"]], dtype=torch.float64, device=device)
    td.all_reduce(sums, op=td.ReduceOp.SUM)
    td.all_reduce(slowest, op=td.ReduceOp.MAX)
    loss_sum, acc_sum, images = sums.tolist()
    seconds = float(slowest.item())
    if images == 0:
        return {**stats, "images": 0, "seconds": seconds, "images_per_s": 0.0}
    return {
        "loss": loss_sum / images,
        "acc": acc_sum / images,
        "images": int(images),
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else float("inf"),
    }
