"""Where things live by default, overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Shipped default checkpoints and their model cards.
DEFAULT_MODELS_DIR = REPO_ROOT / "models"


def data_dir() -> Path:
    """Real images for tests/benchmarks: ``$RETINA_DATA_DIR``, else ``../shared/data``."""
    env = os.environ.get("RETINA_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"
