"""Self-describing checkpoints (nanoGPT style, but ``weights_only``-safe).

A checkpoint is one ``torch.save``-d dict of plain types:

    state_dict   the unwrapped, uncompiled model's tensors (float16 when ``half=True``)
    arch, model_args            rebuild the network with ``models.build_model``
    task, class_names, label_scheme
    preprocess                  ``PreprocessSpec.to_dict()``; serving rebuilds the transform
    config, data, metrics, calibration, card, version, created, software

so ``torch.load(path, weights_only=True)`` reads it and :func:`load` rebuilds the model
from it alone. Anything that would need pickling of a class is refused at save time.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retina import __version__
from retina.errors import CheckpointError
from retina.models import ARCHS, build_model
from retina.preprocessing import PreprocessSpec
from retina.serialize import atomic_write

logger = logging.getLogger(__name__)

FORMAT = "retinascope-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "arch", "model_args", "task", "class_names", "preprocess", "state_dict")


@dataclass
class CheckpointMeta:
    """Everything in a checkpoint except the tensors."""

    arch: str
    model_args: dict[str, Any]
    task: str
    class_names: list[str]
    preprocess: PreprocessSpec
    version: str = "0.0.0"
    label_scheme: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    software: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def temperature(self) -> float:
        """Softmax temperature fitted on validation (1.0 when uncalibrated)."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def ece_after(self) -> Any:
        """ECE after temperature scaling: the cross-fitted figure when there is one (a prediction never
        calibrates itself there), else the validation split's; None when not recorded."""
        cal = self.calibration
        return cal.get("ece_crossfit_after", cal.get("ece_val_after"))


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps in OptimizedModule (._orig_mod); DataParallel/DDP in .module.
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Refuse values ``weights_only`` loading would reject, at save time not load time."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is not str/int")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"{where} holds {type(obj).__name__}; checkpoints take plain types only")


def save(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    model_args: dict[str, Any],
    task: str,
    class_names: list[str] | tuple[str, ...],
    preprocess: PreprocessSpec,
    label_scheme: str | None = None,
    config: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    version: str = "0.1.0",
    half: bool = False,
    int8: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a self-describing checkpoint atomically; returns the path.

    ``half=True`` stores floating tensors as float16 (half the bytes). ``int8=True``
    additionally stores conv/linear weights as int8 with one float32 scale per output
    channel (symmetric, weight-only: a quarter of the bytes, at most 0.4% of a channel's
    largest weight per value). :func:`load` restores float32 either way, so inference runs
    in full precision.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}")
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    scales: dict[str, torch.Tensor] = {}
    if int8:
        state, scales = quantize_int8(state)
    state = {k: (v.half() if (half or int8) and v.is_floating_point() else v) for k, v in state.items()}
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "model_args": dict(model_args),
        "task": task,
        "class_names": list(class_names),
        "label_scheme": label_scheme,
        "preprocess": preprocess.to_dict(),
        "config": config or {},
        "data": data or {},
        "metrics": metrics or {},
        "calibration": calibration or {},
        "card": card or {},
        "version": version,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "software": {
            "retina": __version__,
            "torch": torch.__version__.split("+")[0],
            "python": platform.python_version(),
        },
        "extra": extra or {},
        "dtype": "int8-weights" if int8 else ("float16" if half else "float32"),
        "state_dict": state,
        "int8_scales": scales,
    }
    _check_plain({k: v for k, v in ckpt.items() if k not in ("state_dict", "int8_scales")})
    path = Path(path)
    with atomic_write(path) as tmp:  # a crash never leaves a half-written checkpoint behind
        torch.save(ckpt, tmp)
    return path


def quantize_int8(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Conv/linear weights (ndim >= 2) -> int8 with per-output-channel float32 scales.

    Written by hand because torch.ao quantization targets int8 *inference* kernels (and
    swaps module types); here only the stored file shrinks and the served model stays float32.
    """
    out, scales = dict(state), {}
    for k, w in state.items():
        if w.is_floating_point() and w.ndim >= 2:
            scale = w.float().abs().flatten(1).amax(dim=1).clamp_min(1e-12) / 127.0
            q = torch.round(w.float() / scale.view(-1, *([1] * (w.ndim - 1)))).clamp(-127, 127)
            out[k], scales[k] = q.to(torch.int8), scale
    return out, scales


def dequantize_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors in float32, undoing fp16 and int8 storage."""
    scales = ckpt.get("int8_scales") or {}
    state = {}
    for k, v in ckpt["state_dict"].items():
        if k in scales:
            v = v.float() * scales[k].view(-1, *([1] * (v.ndim - 1)))
        state[k] = v.float() if v.is_floating_point() else v
    return state


def read(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} is not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks keys {missing}")
    if ckpt["format"] != FORMAT or int(ckpt["format_version"]) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {ckpt['format']} v{ckpt['format_version']}")
    return ckpt


def update_meta(path: str | Path, **fields: Any) -> Path:
    """Replace metadata fields (e.g. ``calibration``, ``card``) of a checkpoint, atomically; weights untouched."""
    forbidden = {"state_dict", "int8_scales", "format", "format_version", "arch", "model_args", "class_names"}
    if forbidden & set(fields):
        raise ValueError(f"update_meta cannot change {sorted(forbidden & set(fields))}")
    ckpt = read(path)
    ckpt.update(fields)
    _check_plain({k: v for k, v in ckpt.items() if k not in ("state_dict", "int8_scales")})
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def meta_from_dict(ckpt: dict[str, Any]) -> CheckpointMeta:
    try:
        spec = PreprocessSpec.from_dict(ckpt["preprocess"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid preprocess spec in checkpoint: {e}") from e
    return CheckpointMeta(
        arch=ckpt["arch"],
        model_args=dict(ckpt["model_args"]),
        task=ckpt["task"],
        class_names=list(ckpt["class_names"]),
        preprocess=spec,
        version=str(ckpt.get("version", "0.0.0")),
        label_scheme=ckpt.get("label_scheme"),
        config=ckpt.get("config", {}),
        data=ckpt.get("data", {}),
        metrics=ckpt.get("metrics", {}),
        calibration=ckpt.get("calibration", {}),
        card=ckpt.get("card", {}),
        created=ckpt.get("created", ""),
        software=ckpt.get("software", {}),
        extra=ckpt.get("extra", {}),
    )


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from the checkpoint alone; returns ``(model.eval(), meta)``.

    Raises :class:`CheckpointError` when the file is missing or corrupt, the architecture
    is unknown, the weights do not fit the architecture, or the head's size disagrees with
    ``class_names``. Never returns a partially initialised model.
    """
    ckpt = read(path)
    meta = meta_from_dict(ckpt)
    if meta.arch not in ARCHS:
        raise CheckpointError(f"{path}: unknown architecture {meta.arch!r}")
    try:
        model = build_model(meta.arch, **meta.model_args)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot build {meta.arch} with {meta.model_args}: {e}") from e
    # Pretrained weights were only an initialisation; the checkpoint holds the real ones.
    state = dequantize_state(ckpt)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match {meta.arch}: {e}") from e
    model.eval().to(device)
    n_out = _output_classes(model, meta)
    if n_out != len(meta.class_names):
        raise CheckpointError(f"{path}: model outputs {n_out} classes but class_names has {len(meta.class_names)}")
    return model, meta


def _output_classes(model: nn.Module, meta: CheckpointMeta) -> int:
    spec = meta.preprocess
    with torch.no_grad():
        x = torch.zeros(1, spec.channels, spec.size, spec.size)
        return int(model(x.to(next(model.parameters()).device)).shape[-1])
