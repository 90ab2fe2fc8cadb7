"""Loading the shipped (or any self-describing) models, their engines and the image gate the way the service does.

The service's model store (``backend/app/services/model_store.py``) and the batch scorer
(``scoring/batch.py``) both call :func:`load_model`, :func:`engine_for`, :func:`gate_path` and
:func:`load_gate`, so a checkpoint that the service would refuse to serve is refused by the
scorer too, with the same message, and both run a model's forward pass on the same engine:

* a registered model (``retina.registry.MODELS``) must match its registry entry (arch, task,
  class names, preprocessing spec);
* an unregistered ``*.pt`` is validated by its own metadata (known task, CAM layer present);
* the calibration temperature must be a positive number.

Never falls back to random weights: every problem is a :class:`ModelRejected`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from retina import checkpoint, registry
from retina.checkpoint import CheckpointMeta
from retina.engine import Engine, EngineInfo, TorchEngine, load_engine
from retina.errors import CheckpointError
from retina.gate import GATE_FILE, ImageGate
from retina.models import ARCHS
from retina.paths import DEFAULT_MODELS_DIR


class ModelRejected(CheckpointError):
    """A checkpoint that must not be served; ``task`` is what it claims to read, when that is known."""

    def __init__(self, message: str, task: str | None = None) -> None:
        super().__init__(message)
        self.task = task


@dataclass(frozen=True)
class LoadedModel:
    """A validated model, in eval mode and ``channels_last`` on ``device``.

    Attributes:
        id: model id (registry key, or the file stem of an unregistered checkpoint).
        task: ``oct`` or ``fundus``.
        path: the checkpoint file.
        meta: its metadata (preprocess spec, class names, calibration, card ...).
        model: ``(N, C, S, S)`` normalised input -> ``(N, K)`` logits.
        cam_layer: submodule path of the CAM target layer (checked to exist).
        registered: True for models of ``retina.registry.MODELS``.
    """

    id: str
    task: str
    path: Path
    meta: CheckpointMeta
    model: nn.Module
    cam_layer: str
    registered: bool
    description: str = ""


def load_model(key: str, path: Path, spec: registry.ModelSpec | None, device: torch.device) -> LoadedModel:
    """Load ``path`` as model ``key`` and check it (against ``spec`` when registered); ``ModelRejected`` if unfit."""
    task = spec.task if spec else None
    if not path.is_file():
        raise ModelRejected(f"checkpoint not found: {path}", task)
    try:
        model, meta = checkpoint.load(path, device=device)
    except CheckpointError as e:
        raise ModelRejected(str(e), task) from e
    if spec is not None:
        problems = registry.mismatches(spec, meta)
        if problems:
            raise ModelRejected(f"{path.name} does not match the registry: " + "; ".join(problems), task)
        cam_layer = spec.cam_layer
    else:
        if meta.task not in registry.TASKS:
            raise ModelRejected(f"task {meta.task!r} is not one of {registry.TASKS}", task)
        cam_layer = ARCHS[meta.arch].cam_layer
    task = meta.task
    # NHWC lets oneDNN pick its fast convolution kernels: measured 2-3x less CPU per
    # image for the small OCT CNN, ~10% for MobileNetV3; numerics agree to ~1e-6.
    model = model.to(memory_format=torch.channels_last)
    try:
        model.get_submodule(cam_layer)
    except AttributeError as e:
        raise ModelRejected(f"CAM layer {cam_layer!r} not found in {meta.arch}: {e}", task) from e
    if not (meta.temperature > 0 and math.isfinite(meta.temperature)):
        raise ModelRejected(f"calibration temperature {meta.temperature!r} is not a positive number", task)
    description = spec.description if spec else str(meta.card.get("description", "") if meta.card else "")
    return LoadedModel(key, task, path, meta, model, cam_layer, spec is not None, description)


def locate(name: str, models_dir: Path) -> tuple[str, Path, registry.ModelSpec | None]:
    """``oct``/``fundus`` (the registry's default), a registered id, or the stem of a ``*.pt`` in ``models_dir``
    -> ``(id, checkpoint path, registry entry or None)``; ``KeyError`` when it is none of these."""
    if name in registry.TASKS:
        spec = registry.default_for(name)
        return spec.key, models_dir / spec.checkpoint, spec
    if name in registry.MODELS:
        spec = registry.MODELS[name]
        return name, models_dir / spec.checkpoint, spec
    path = models_dir / f"{name}.pt"
    if path.is_file() and name != Path(GATE_FILE).stem:
        return name, path, None
    raise KeyError(f"unknown model {name!r}: not a task ({', '.join(registry.TASKS)}), registered id or {path}")


def gate_path(models_dir: Path, gate_file: Path | None = None) -> Path:
    """The image gate the service uses: ``gate_file`` if given, else the one in ``models_dir``, else the shipped one.

    A custom models dir may bring its own gate; otherwise the shipped one applies.
    """
    beside = Path(models_dir) / GATE_FILE
    return Path(gate_file or (beside if beside.is_file() else DEFAULT_MODELS_DIR / GATE_FILE))


def load_gate(path: Path, engine: str = "torch", cache_dir: Path | str | None = None) -> ImageGate:
    """The image gate from ``path`` (see :func:`gate_path`), its CNN on ``engine`` as the service's ``RETINA_ENGINE``.

    The gate always runs on the CPU, whatever device the models use. Raises what
    ``ImageGate.load`` raises for a file that is not a gate.
    """
    gate = ImageGate.load(path)  # a checkpoint: loads onto the CPU, where the gate runs
    if engine != "torch":
        gate.use_engine(engine, path, cache_dir)
    return gate


def engine_for(
    requested: str,
    loaded: LoadedModel,
    device: torch.device,
    *,
    threads: int = 1,
    cache_dir: Path | str | None = None,
) -> tuple[Engine, EngineInfo]:
    """The engine that runs ``loaded``'s classification forward: the one choice of the service and the batch scorer.

    On the CPU, ``retina.engine.load_engine`` picks ``requested`` (one of ``retina.engine.ENGINES`` or
    ``auto``; a failing one falls back to torch, logged, and the reason kept in the ``EngineInfo``). On
    another device the model stays on torch: the exported engines here are CPU ones. Raises
    ``retina.engine.EngineError`` when not even torch runs the model.
    """
    if device.type != "cpu":
        return TorchEngine(loaded.model), EngineInfo("torch", requested, f"{device.type}: torch")
    return load_engine(requested, loaded.model, loaded.meta, loaded.path, threads=threads, cache_dir=cache_dir)
