"""What every ``python -m training...`` command shares: config flags, logging setup and clean exits on user errors.

Helpers for command modules only; no library module imports this one.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from retina.errors import CheckpointError
from training import config as config_mod
from training.config import ConfigError, TrainConfig
from training.data.tables import DatasetError

logger = logging.getLogger("training")

# Problems with the user's input (config, data, checkpoint path): one error line and exit 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DatasetError, CheckpointError, FileNotFoundError)


def run_cli(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], Any],
    argv: list[str] | None = None,
    log: logging.Logger = logger,
) -> int:
    """Parse ``argv``, set up logging and call ``body(args)``.

    Returns 0 on success, 2 (after logging the message to ``log``) on a :data:`USER_ERRORS` error.
    """
    args = parser.parse_args(argv)
    setup_logging()
    try:
        body(args)
    except USER_ERRORS as e:
        log.error("%s", e)
        return 2
    return 0


def setup_logging(out: Path | None = None, *, main: bool = True) -> None:
    """INFO to stderr (and ``out/train.log``); idempotent across calls in one process.

    ``main=False`` (torchrun ranks other than 0): warnings and errors only, and no log file,
    so that one run has one log.
    """
    root = logging.getLogger()
    if not any(getattr(h, "_retina", False) for h in root.handlers):
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        h._retina = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.INFO if main else logging.WARNING)
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
        for h in list(root.handlers):
            if getattr(h, "_retina_file", False):
                root.removeHandler(h)
                h.close()
        fh = logging.FileHandler(out / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh._retina_file = True  # type: ignore[attr-defined]
        root.addHandler(fh)


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags shared by ``training.train`` and ``training.cv``."""
    parser.add_argument("--config", help="YAML config (path, or a name under training/configs/)")
    parser.add_argument("--data", help="dataset root or .npz (overrides data.path)")
    parser.add_argument("--out", help="output directory (overrides out)")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides epochs)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value by dotted key, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    return parser


def config_from_args(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Resolve a config from parsed :func:`add_common_args` flags (``base`` replaces the file)."""
    explicit = {"data.path": args.data, "out": args.out, "epochs": args.epochs}
    source: Any = base if base is not None else args.config
    return config_mod.resolve(source, args.sets, explicit)
