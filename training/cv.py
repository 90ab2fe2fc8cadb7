"""Patient-grouped K-fold cross-validation of a config, and optionally a final model on all the data.

    python -m training.cv --config training/configs/fundus_resnet50.yaml \\
        --data ../shared/data/fundus-train --folds 5 --out runs/fundus_cv [--final] [--set key=value ...]

Parses flags and calls :func:`training.fit.crossval.cross_validate` (what it writes is described there).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from training.cli import add_common_args, config_from_args, run_cli, setup_logging
from training.config import ConfigError
from training.fit.crossval import cross_validate

logger = logging.getLogger("training.cv")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.cv", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--final", action="store_true", help="also train one model on all data, with the CV metrics")
    return p


def _main(args: argparse.Namespace) -> None:
    if not args.config:
        raise ConfigError("pass --config")
    cfg = config_from_args(args)
    out = Path(cfg.out or Path("runs") / f"{cfg.name}_cv")
    cfg = replace(cfg, out=str(out))
    setup_logging(out)
    cross_validate(cfg, args.folds, out, final=args.final)


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _main, argv, logger)


if __name__ == "__main__":
    sys.exit(main())
