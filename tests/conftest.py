"""Shared fixtures: real-data location, tiny checkpoints saved with the real save()."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from retina import checkpoint
from retina.gate import GATE_FILE
from retina.paths import DEFAULT_MODELS_DIR, data_dir
from retina.registry import MODELS, ModelSpec

DATA = data_dir()

# Apps and servers started by tests run the forward pass on torch unless a test asks for another
# engine (tests/unit/test_engine.py, tests/api/test_engine_api.py): exporting every throwaway
# random checkpoint to ONNX would add seconds to each of the hundreds of apps the suite builds.
os.environ.setdefault("RETINA_ENGINE", "torch")
os.environ.setdefault("RETINA_ENGINE_CACHE", tempfile.mkdtemp(prefix="retina-test-engines-"))


def _need(sub: str) -> Path:
    p = DATA / sub
    if not p.is_dir():
        pytest.skip(f"real data {p} absent (set RETINA_DATA_DIR or place ../shared/data)")
    return p


@pytest.fixture(scope="session")
def oct_dev() -> Path:
    """``../shared/data/oct-dev`` (OCT2017 layout + labels.csv); skips when absent."""
    return _need("oct-dev")


@pytest.fixture(scope="session")
def fundus_dev() -> Path:
    """``../shared/data/fundus-dev`` (EyePACS layout); skips when absent."""
    return _need("fundus-dev")


@pytest.fixture(scope="session")
def fundus_train() -> Path:
    return _need("fundus-train")


def save_random_checkpoint(spec: ModelSpec, path: Path, seed: int = 0) -> Path:
    """A checkpoint of ``spec`` with *random* weights, written by the real save().

    For tests only: it exercises loading, validation and the API, never accuracy.
    Freshly initialised networks with batch norm in eval mode (running stats 0/1) can
    collapse to a constant output (MobileNetV3 does), which would make "equals the offline
    model" tests pass vacuously; a few train-mode passes on noise give the BN layers real
    statistics while the weights stay random.
    """
    from retina.models import build_model

    torch.manual_seed(seed)
    args = {"in_channels": spec.preprocess.channels, "num_classes": len(spec.class_names)}
    model = build_model(spec.arch, **args)
    size, channels = spec.preprocess.size, spec.preprocess.channels
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: the stats are exactly those of the passes below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, channels, size, size))
    model.eval()
    for bn in bns:
        bn.momentum = 0.1
    return checkpoint.save(
        path,
        model,
        arch=spec.arch,
        model_args=args,
        task=spec.task,
        class_names=list(spec.class_names),
        preprocess=spec.preprocess,
        label_scheme="grade" if spec.task == "fundus" else None,
        metrics={"note": "random weights for tests"},
        version="0.0.0-test",
    )


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir holding every registered model with random weights (session-scoped)."""
    d = tmp_path_factory.mktemp("models")
    for spec in MODELS.values():
        save_random_checkpoint(spec, d / spec.checkpoint)
    copy_gate(d)
    return d


def copy_gate(models_dir: Path) -> Path:
    """Put the shipped image gate (models/image-gate.pt) beside test checkpoints, as in models/."""
    return Path(shutil.copy(DEFAULT_MODELS_DIR / GATE_FILE, models_dir / GATE_FILE))


@pytest.fixture
def make_checkpoint() -> Callable[[ModelSpec, Path], Path]:
    return save_random_checkpoint
