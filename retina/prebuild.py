"""Build and cache the inference engine of every checkpoint in a models dir (see ``retina.engine``)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from retina import checkpoint
from retina.engine import load_engine
from retina.gate import ImageGate
from retina.paths import DEFAULT_MODELS_DIR

logger = logging.getLogger("retina.prebuild")


def main(argv: list[str] | None = None) -> int:
    """``python -m retina.prebuild [MODELS_DIR] [--engine auto]``: build and cache every checkpoint's engine.

    Run at image build time (Dockerfile.backend) so a container starts without exporting, or
    by hand to see which engine each model would get and why.
    """
    ap = argparse.ArgumentParser(prog="python -m retina.prebuild", description=main.__doc__)
    ap.add_argument("models_dir", nargs="?", type=Path, default=DEFAULT_MODELS_DIR)
    ap.add_argument("--engine", default=os.environ.get("RETINA_ENGINE", "auto"))
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    paths = sorted(args.models_dir.glob("*.pt"))
    if not paths:
        logger.error("no checkpoints in %s", args.models_dir)
        return 2
    for path in paths:
        model, meta = checkpoint.load(path)
        if meta.arch == "gatenet":  # the image gate: fp32 only (see retina.gate.ImageGate.use_engine)
            logger.info("%s: engine %s", path.name, ImageGate.load(path).use_engine(args.engine, path, args.cache_dir))
            continue
        _, info = load_engine(args.engine, model, meta, path, threads=args.threads, cache_dir=args.cache_dir)
        logger.info("%s: engine %s (%s)", path.name, info.name, info.detail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
