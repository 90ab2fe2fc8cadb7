"""Warm starts: a model initialised from an earlier RetinaScope checkpoint of the same network.

A training concern, so it lives here and not in the model builders (``retina.models`` only
reads torchvision state dicts, and ``retina.checkpoint`` builds models: reading checkpoints
from the builders was an import cycle). A fine-tune of the same task keeps the head when it
has the same shape (e.g. more data); another number of classes gets a new head.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retina.checkpoint import FORMAT, dequantize_state
from retina.models import build_model

logger = logging.getLogger(__name__)


def _checkpoint_at(weights: Any) -> dict[str, Any] | None:
    """The RetinaScope checkpoint that ``weights`` names, or None (``imagenet``, a state dict, no file)."""
    if not isinstance(weights, str) or weights == "imagenet" or not Path(weights).expanduser().is_file():
        return None
    state = torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)
    return state if isinstance(state, dict) and "state_dict" in state and "format" in state else None


def warm_state(ckpt: dict[str, Any], arch: str, in_channels: int, path: str) -> dict[str, torch.Tensor]:
    """A RetinaScope checkpoint's float32 weights, after checking it is the same network."""
    if ckpt.get("format") != FORMAT or ckpt.get("arch") != arch:
        raise ValueError(f"{path} is a {ckpt.get('arch')!r} checkpoint, not {arch!r}")
    if int(ckpt.get("model_args", {}).get("in_channels", 3)) != in_channels:
        raise ValueError(f"{path} takes {ckpt['model_args'].get('in_channels')} channels, not {in_channels}")
    return dequantize_state(ckpt)


def load_warm(model: nn.Module, warm: dict[str, torch.Tensor], head_attr: str, source: str) -> bool:
    """Load every backbone tensor of ``warm`` into ``model`` (strictly), the head only when it has the same shape.

    Returns whether the head was kept.
    """
    own = model.state_dict()
    head = {k: v for k, v in warm.items() if k.startswith(head_attr + ".")}
    same_head = bool(head) and set(head) == {k for k in own if k.startswith(head_attr + ".")}
    same_head = same_head and all(own[k].shape == v.shape for k, v in head.items())
    backbone = {k: v for k, v in warm.items() if same_head or not k.startswith(head_attr + ".")}
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    bad = [k for k in missing if not k.startswith(head_attr + ".")]
    if bad or unexpected:
        raise ValueError(
            f"{source} does not fit {type(model).__name__}: missing {bad[:5]}, unexpected {unexpected[:5]}"
        )
    return same_head


def build_model_warm(arch: str, **model_args: Any) -> nn.Module:
    """``retina.models.build_model``, where ``weights`` may also name a RetinaScope checkpoint: a warm start.

    Only torchvision architectures (``fc`` head for ResNets, ``classifier`` otherwise) warm-start.
    """
    weights = model_args.get("weights")
    ckpt = _checkpoint_at(weights)
    if ckpt is None:
        return build_model(arch, **model_args)
    warm = warm_state(ckpt, arch, int(model_args.get("in_channels", 3)), weights)
    model = build_model(arch, **{**model_args, "weights": None})
    kept = load_warm(model, warm, "fc" if arch.startswith("resnet") else "classifier", weights)
    logger.info("warm start: %s from checkpoint %s (%s)", arch, weights, "head kept" if kept else "new head")
    return model
