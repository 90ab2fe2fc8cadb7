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
import logging
import sys
import time
from pathlib import Path
from typing import Any

from retina import checkpoint
from retina.runtime import resolve_device
from training import config as config_mod
from training import distributed, simclr
from training.cli import run_cli, setup_logging
from training.config import ConfigError
from training.data import prepare_data
from training.fit import fit

logger = logging.getLogger("training.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    config_mod.add_common_args(p)
    p.add_argument("--resume", help="continue from a last.pt (its config is the base unless --config is given)")
    return p


def run(cfg: dict[str, Any], resume: dict[str, Any] | None = None) -> Path:
    """Train from a resolved config; returns the output directory.

    Started by ``torchrun`` (``RANK``/``WORLD_SIZE`` set), it trains with DistributedDataParallel,
    one process per GPU (or CPU slot); see :mod:`training.distributed`.
    """
    out = Path(cfg["out"] or Path("runs") / (cfg["name"] or "run"))
    cfg["out"] = str(out)
    dist = distributed.from_env()
    setup_logging(out, main=dist.is_main)
    logger.info("config %s -> %s", cfg["name"], out)
    t0 = time.perf_counter()
    if cfg["simclr"] is not None:
        if dist.enabled:
            raise ConfigError("SimCLR configs train in one process; run them without torchrun")
        simclr.run(cfg, out)
    else:
        try:
            distributed.init(dist, resolve_device(cfg["device"]))  # the group, before the first barrier
            with distributed.main_first(dist):  # rank 0 fills the prepared-image cache, the others read it
                bundle = prepare_data(cfg)
            s = bundle.splits
            fit(cfg, bundle, out, train_idx=s["train"], val_idx=s["val"], test_idx=s["test"], resume=resume, dist=dist)
        finally:
            distributed.shutdown()
    logger.info("done in %.1fs", time.perf_counter() - t0)
    return out


def _main(args: argparse.Namespace) -> None:
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


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _main, argv, logger)


if __name__ == "__main__":
    sys.exit(main())
