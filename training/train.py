"""Train one model from a YAML config and save a self-describing checkpoint.

    python -m training.train --config training/configs/oct_simplecnn.yaml \\
        --data ../shared/data/oct-dev --out runs/oct_simplecnn [--epochs N] [--set key=value ...]
    python -m training.train --resume runs/oct_simplecnn/last.pt [--epochs 20]

This module only parses flags, resolves the :class:`~training.config.TrainConfig` and
sets up logging; the run itself is :func:`training.fit.pipeline.train`, which writes

    OUT/best.pt       the best epoch (retina.checkpoint format; fp16 when ``half``)
    OUT/last.pt       the last epoch plus optimizer/scheduler state for ``--resume``
    OUT/config.yaml   the resolved config (also inside both checkpoints)
    OUT/history.csv   one row per epoch, and OUT/training_curves.png
    OUT/train.log
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from retina import checkpoint
from training.cli import add_common_args, config_from_args, run_cli, setup_logging
from training.config import ConfigError
from training.fit import distributed
from training.fit.pipeline import train

logger = logging.getLogger("training.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--resume", help="continue from a last.pt (its config is the base unless --config is given)")
    return p


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
    cfg = config_from_args(args, base)
    setup_logging(cfg.out_dir, main=distributed.from_env().is_main)
    train(cfg, resume)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _main, argv, logger)


if __name__ == "__main__":
    sys.exit(main())
