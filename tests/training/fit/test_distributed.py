"""Training on several processes: the epoch's draw is sharded across ranks, and ``torchrun`` with gloo
writes the same self-describing checkpoint as a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retina import checkpoint
from retina.paths import REPO_ROOT
from retina.preprocessing import get_preset
from tests.training import synth
from training.data.loaders import AugmentedBatches, TensorBatches, shard_indices
from training.fit import distributed
from training.train import main


def _interleave(shards: list[torch.Tensor]) -> torch.Tensor:
    """``shards[r][i]`` back at position ``i * world + r``: the draw the shards were cut from (plus padding)."""
    return torch.stack(shards, dim=1).reshape(-1)


def test_shards_are_disjoint_parts_of_one_draw() -> None:
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shards = [shard_indices(order, 3, r) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # ceil(10 / 3) each: every rank runs as many steps
    np.testing.assert_array_equal(_interleave(shards)[:10], order)  # together: the whole draw, in order
    np.testing.assert_array_equal(_interleave(shards)[10:], order[:2])  # padded with its start
    assert shard_indices(order, 1, 0) is order


def test_tensor_batches_ranks_split_the_weighted_draw_of_a_single_process() -> None:
    n = 21
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)  # pixel value = row index
    labels = torch.zeros(n, dtype=torch.long)
    weights = torch.linspace(0.1, 1.0, n)

    def rows(world: int, rank: int, epoch: int) -> torch.Tensor:
        tb = TensorBatches(images, labels, 4, shuffle=True, seed=7, weights=weights, num_replicas=world, rank=rank)
        tb.set_epoch(epoch)
        got = torch.cat([x.view(-1) for x, _ in tb]).long()
        assert len(tb) == sum(1 for _ in tb)
        return got

    single = rows(1, 0, epoch=3)
    assert len(single) == 20  # 21 draws in batches of 4: the trailing batch of 1 is dropped
    both = [rows(2, r, epoch=3) for r in range(2)]
    assert len(both[0]) == len(both[1]) == 11  # ceil(21 / 2) each
    np.testing.assert_array_equal(_interleave(both)[:20], single)
    assert not torch.equal(rows(2, 0, epoch=4), both[0])  # set_epoch draws anew


@pytest.mark.parametrize("weighted", [False, True])
def test_augmented_batches_ranks_split_the_oversampled_draw(weighted: bool) -> None:
    spec = get_preset("oct_28")
    n = 30
    images = torch.zeros(n, spec.channels, spec.size, spec.size, dtype=torch.uint8)
    labels = np.zeros(n, dtype=np.int64)
    weights = torch.linspace(0.1, 1.0, n) if weighted else None

    def draw(world: int, rank: int) -> AugmentedBatches:
        ab = AugmentedBatches(
            images, labels, spec, "light", 8, seed=3, weights=weights, num_samples=50, num_replicas=world, rank=rank
        )
        ab.set_epoch(2)
        return ab

    single = draw(1, 0).indices()
    assert len(single) == 50  # epoch_images draws, with replacement
    shards = [draw(2, r) for r in range(2)]
    np.testing.assert_array_equal(_interleave([s.indices() for s in shards])[:50], single)
    assert len(shards[0]) == 3  # 25 draws per rank in batches of 8: 3 (the trailing batch of 1 is dropped)
    x, _ = next(iter(shards[1]))
    assert x.shape == (8, spec.channels, spec.size, spec.size) and x.dtype == torch.uint8


def test_ranks_come_from_the_torchrun_environment() -> None:
    assert distributed.from_env({}) == distributed.SINGLE and distributed.SINGLE.is_main
    d = distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (3, 4, 1, 2)
    assert d.enabled and not d.is_main
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    assert distributed.threads_per_process(0, d) >= 1 and distributed.threads_per_process(3, d) == 3


def _args(data: Path, out: Path) -> list[str]:
    sets = [
        "threads=1",
        "progress=false",
        "n_bootstrap=10",
        "batch_size=8",
        "augment=light",  # the AugmentedBatches path, oversampled to epoch_images
        "epoch_images=40",
        "device=cpu",
        f"data.cache_dir={out.parent / 'cache'}",
    ]
    return ["--config", "oct_simplecnn", "--data", str(data), "--out", str(out), "--epochs", "1"] + [
        a for s in sets for a in ("--set", s)
    ]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_write_the_single_process_checkpoint(tmp_path: Path) -> None:
    data = synth.make_medmnist(tmp_path / "octmnist.npz", n_train=48, n_val=16, n_test=16)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    ddp_out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "training.train", *_args(data, ddp_out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert main(_args(data, tmp_path / "single")) == 0

    ddp_model, ddp = checkpoint.load(ddp_out / "best.pt")
    single_model, one = checkpoint.load(tmp_path / "single" / "best.pt")
    assert (ddp.arch, ddp.model_args, ddp.class_names, ddp.task) == (
        one.arch,
        one.model_args,
        one.class_names,
        one.task,
    )
    assert ddp.preprocess == one.preprocess
    assert ddp.config["epochs"] == 1 and ddp.metrics["test"]["n"] == one.metrics["test"]["n"] == 16
    # The saved state is the unwrapped network's: same keys and shapes, no DDP "module." prefix.
    a, b = ddp_model.state_dict(), single_model.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert (ddp_out / "last.pt").is_file() and "resume" in checkpoint.read(ddp_out / "last.pt")["extra"]
    # One log, rank 0's: the other rank logged no epoch line into it.
    log = (ddp_out / "train.log").read_text()
    assert log.count("epoch 1/1 train loss") == 1 and "batch 8 x 2 processes" in log
