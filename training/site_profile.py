"""Fit a site profile: one clinic's temperature and fundus operating points from its own graded photos.

    python -m training.site_profile --data DIR --name NAME --out SITES_DIR \\
        [--checkpoint models/fundus-resnet18.pt] [--target-sensitivity 0.87]

Parses flags and calls :func:`training.sites.profile.fit_site` (the method and the refusals are
described there). Exit 2 when the photos cannot support a profile (nothing written), 1 on a
bad checkpoint or folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from retina.checkpoint import CheckpointError
from training.cli import setup_logging
from training.sites.profile import DEFAULT_CHECKPOINT, DEFAULT_TARGET, ProfileRefused, fit_site

logger = logging.getLogger("training.site_profile")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.site_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the site's photos: train/*.jpeg + trainLabels.csv")
    p.add_argument("--name", required=True, help="profile name (letters, digits, . _ -): the API's site=NAME")
    p.add_argument("--out", type=Path, required=True, help="the sites directory (RETINA_SITES_DIR)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the served fundus checkpoint")
    p.add_argument("--target-sensitivity", type=float, default=DEFAULT_TARGET)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cache-dir", type=Path, default=None, help="keep the scored logits here (optional)")
    p.add_argument("--n-bootstrap", type=int, default=1000)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        fit_site(
            args.data,
            args.name,
            args.out,
            checkpoint_path=args.checkpoint,
            target=args.target_sensitivity,
            device=args.device,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            n_boot=args.n_bootstrap,
        )
    except ProfileRefused as e:
        logger.error("no profile written: %s", e)
        return 2
    except (ValueError, OSError, CheckpointError) as e:  # DatasetError, a bad checkpoint, an unreadable folder
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
