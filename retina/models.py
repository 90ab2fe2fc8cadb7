"""Model builders, all ``builder(in_channels=..., num_classes=..., **kw) -> nn.Module``.

Architectures are registered by name (torchvision's ``register_model`` pattern) with the
layer Grad-CAM should look at, so checkpoints store only ``arch`` + ``model_args`` and
serving rebuilds the exact network from them.

ImageNet weights are never downloaded: ``weights="imagenet"`` reads torchvision's file
from the torch hub cache (``$TORCH_HOME/hub/checkpoints``), ``weights=<path>`` reads a
local state dict (a warm start from an earlier RetinaScope checkpoint is training's:
``training/fit/warm_start.py``), and a missing file is a
:class:`FileNotFoundError`, not a silent random initialisation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchInfo:
    """A registered architecture: how to build it and where its CAM layer is."""

    name: str
    builder: Callable[..., nn.Module]
    cam_layer: str
    description: str


ARCHS: dict[str, ArchInfo] = {}


def register_arch(
    name: str, cam_layer: str, description: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ARCHS:
            raise ValueError(f"architecture {name!r} is already registered")
        ARCHS[name] = ArchInfo(name, fn, cam_layer, description)
        return fn

    return deco


def build_model(arch: str, **model_args: Any) -> nn.Module:
    """Build a registered architecture from plain-typed ``model_args``."""
    try:
        info = ARCHS[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}") from None
    return info.builder(**model_args)


def cam_layer_for(arch: str) -> str:
    return ARCHS[arch].cam_layer


# ----------------------------------------------------------------------------- simple CNN


class SmallCNN(nn.Module):
    """Conv(32,3x3)-ReLU-MaxPool(2), Conv(64,3x3)-ReLU-MaxPool(2), Flatten, Linear.

    Input ``(N, C, H, W)`` with any ``H, W >= 4``; output logits ``(N, num_classes)``.
    An adaptive pool to 7x7 before the flatten is an identity at OCTMNIST's 28 px
    (28 -> 14 -> 7) and keeps the classifier size fixed at larger inputs (up to 224).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register_arch("simplecnn", cam_layer="features.3", description="2-conv CNN (OCTMNIST baseline)")
def small_cnn(in_channels: int = 1, num_classes: int = 4) -> nn.Module:
    return SmallCNN(in_channels=in_channels, num_classes=num_classes)


class GateNet(nn.Module):
    """The image gate's modality classifier: four Conv-BN-ReLU blocks, global average, Linear.

    Input ``(N, 3, S, S)`` (S = 64 in the shipped gate, colour kept: colour is most of what
    tells a fundus photo from a photograph); output logits ``(N, num_classes)`` over
    ``oct``, ``fundus``, ``other``. Each block halves the resolution with a max-pool, except
    the first when ``stem_stride`` is 2: a strided first convolution then does it, which
    skips the full-resolution feature map (the most memory traffic of the network: ~0.6 of
    the CPU time of a 64-px forward at ~1/10 of the FLOPs). About 0.1 M parameters.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 3, width: int = 16, dropout: float = 0.2, stem_stride: int = 1
    ) -> None:
        super().__init__()
        chans = [in_channels, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            stride = stem_stride if i == 0 else 1
            layers += [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            layers.append(nn.MaxPool2d(2) if stride == 1 else nn.Identity())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(chans[-1], num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_arch("gatenet", cam_layer="features.14", description="4-block CNN: OCT / fundus / other image gate")
def gate_net(
    in_channels: int = 3, num_classes: int = 3, width: int = 16, dropout: float = 0.2, stem_stride: int = 1
) -> nn.Module:
    return GateNet(
        in_channels=in_channels, num_classes=num_classes, width=width, dropout=dropout, stem_stride=stem_stride
    )


# ----------------------------------------------------------------------------- torchvision


_TV_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
    "efficientnet_b0": "EfficientNet_B0_Weights",
}


def resolve_pretrained(tv_name: str, weights: str) -> Path:
    """Find ImageNet weights locally: an explicit path, or torchvision's hub-cache file.

    Raises FileNotFoundError naming both places looked at. Never downloads.
    """
    if weights != "imagenet":
        p = Path(weights).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {p}")
        return p
    enum = getattr(torchvision.models, _TV_WEIGHTS[tv_name]).IMAGENET1K_V1
    fname = os.path.basename(enum.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not cached.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {tv_name} requested but {cached} is absent and downloads are "
            f"disabled; put {fname} there (or pass weights=<local state dict path>), or train "
            "from scratch with weights=null"
        )
    return cached


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Return a conv taking ``in_channels`` that keeps pretrained RGB filters' response.

    For grayscale, summing the RGB kernels gives the same activation as feeding the gray
    image replicated to 3 channels, so no pretrained first-layer information is lost.
    """
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )
    with torch.no_grad():
        w = conv.weight.sum(dim=1, keepdim=True)  # (out, 1, k, k)
        new.weight.copy_(w.repeat(1, in_channels, 1, 1) / in_channels if in_channels != 1 else w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _head(in_features: int, num_classes: int, hidden: int | None, dropout: float) -> nn.Module:
    if not hidden:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
    )


def _tv_model(
    tv_name: str,
    in_channels: int,
    num_classes: int,
    weights: str | None,
    freeze_backbone: bool,
    head_hidden: int | None,
    dropout: float,
) -> nn.Module:
    model = getattr(torchvision.models, tv_name)(weights=None)
    if weights:
        state = torch.load(resolve_pretrained(tv_name, weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and "format" in state:
            raise ValueError(
                f"{weights} is a RetinaScope checkpoint: warm starts are training.fit.warm_start.build_model_warm's"
            )
        model.load_state_dict(state)
        logger.info("loaded pretrained %s weights from %s", tv_name, weights)
    if tv_name.startswith("resnet"):
        model.conv1 = _adapt_first_conv(model.conv1, in_channels)
        head_attr, in_features = "fc", model.fc.in_features
        model.fc = _head(in_features, num_classes, head_hidden, dropout)
    else:  # mobilenet / efficientnet: features[0][0] is the stem conv, classifier[-1] the head
        model.features[0][0] = _adapt_first_conv(model.features[0][0], in_channels)
        head_attr = "classifier"
        last = model.classifier[-1]
        model.classifier[-1] = _head(last.in_features, num_classes, head_hidden, dropout)
    if freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(head_attr)
    return model


def _register_tv(name: str, cam_layer: str, description: str) -> None:
    def builder(
        in_channels: int = 3,
        num_classes: int = 2,
        weights: str | None = None,
        freeze_backbone: bool = False,
        head_hidden: int | None = None,
        dropout: float = 0.3,
    ) -> nn.Module:
        return _tv_model(name, in_channels, num_classes, weights, freeze_backbone, head_hidden, dropout)

    builder.__name__ = name
    builder.__doc__ = (
        f"torchvision {name}: input ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``. "
        "``head_hidden=128`` gives the Linear(128)-ReLU-Dropout(0.3)-Linear fundus head; "
        "``freeze_backbone`` trains the head only."
    )
    register_arch(name, cam_layer, description)(builder)


_register_tv("resnet18", "layer4", "torchvision ResNet-18")
_register_tv("resnet34", "layer4", "torchvision ResNet-34")
_register_tv("resnet50", "layer4", "torchvision ResNet-50")
_register_tv("mobilenet_v3_large", "features.16", "torchvision MobileNetV3-Large (compact)")
_register_tv("efficientnet_b0", "features.8", "torchvision EfficientNet-B0 (compact)")


# ----------------------------------------------------------------------------- SimCLR


class SimCLRClassifier(nn.Module):
    """SimCLR model: ``backbone`` (ResNet, fc removed) + ``projection_head`` or classifier.

    ``backbone`` maps ``(N, C, H, W)`` to features ``(N, F)``. During contrastive
    pretraining ``projection_head`` maps them to ``(N, proj_dim)`` and ``head`` is unused;
    for fine-tuning/linear probing ``head`` maps features to logits ``(N, num_classes)``.
    Only ``backbone`` is exported after pretraining (the projection head is discarded,
    as in Chen et al. 2020).
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        in_channels: int = 1,
        num_classes: int = 4,
        proj_dim: int = 128,
        proj_hidden: int = 512,
    ) -> None:
        super().__init__()
        base = getattr(torchvision.models, encoder)(weights=None)
        base.conv1 = _adapt_first_conv(base.conv1, in_channels)
        feat = base.fc.in_features
        base.fc = nn.Identity()
        self.backbone = base
        self.projection_head = nn.Sequential(
            nn.Linear(feat, proj_hidden), nn.ReLU(inplace=True), nn.Linear(proj_hidden, proj_dim)
        )
        self.head = nn.Linear(feat, num_classes)
        self.feature_dim = feat

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> projections ``(N, proj_dim)`` for the NT-Xent loss."""
        return self.projection_head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> logits ``(N, num_classes)``."""
        return self.head(self.backbone(x))


@register_arch("simclr", cam_layer="backbone.layer4", description="SimCLR ResNet encoder + linear head")
def simclr_encoder(
    encoder: str = "resnet18", in_channels: int = 1, num_classes: int = 4, proj_dim: int = 128, proj_hidden: int = 512
) -> nn.Module:
    return SimCLRClassifier(encoder, in_channels, num_classes, proj_dim, proj_hidden)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
