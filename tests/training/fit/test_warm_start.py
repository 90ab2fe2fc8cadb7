"""``weights=<RetinaScope checkpoint>``: warm start keeps the backbone, builds a new head, refuses other networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retina import checkpoint
from retina.registry import default_for
from training.fit.warm_start import build_model_warm as build_model


def test_warm_start_copies_the_backbone_and_builds_a_new_head(tiny_models_dir: Path) -> None:
    spec = default_for("fundus")
    path = tiny_models_dir / spec.checkpoint
    if spec.arch != "resnet18":
        pytest.skip("the default fundus model is not a ResNet-18")
    source, _ = checkpoint.load(path)
    warm = build_model("resnet18", in_channels=3, num_classes=2, weights=str(path))
    for name, p in source.named_parameters():
        if not name.startswith("fc."):
            assert torch.equal(p, dict(warm.named_parameters())[name]), name
    head = warm.fc[-1] if isinstance(warm.fc, torch.nn.Sequential) else warm.fc
    assert head.out_features == 2


def test_warm_start_refuses_another_architecture(tiny_models_dir: Path) -> None:
    path = tiny_models_dir / default_for("fundus").checkpoint
    with pytest.raises(ValueError, match="checkpoint, not"):
        build_model("resnet34", in_channels=3, num_classes=5, weights=str(path))
    with pytest.raises(ValueError, match="channels"):
        build_model("resnet18", in_channels=1, num_classes=5, weights=str(path))


def test_warm_start_keeps_a_head_of_the_same_shape(tiny_models_dir: Path) -> None:
    """A fine-tune of the same task (more data, other augmentation) starts from the trained head too."""
    spec = default_for("fundus")
    path = tiny_models_dir / spec.checkpoint
    if spec.arch != "resnet18":
        pytest.skip("the default fundus model is not a ResNet-18")
    source, meta = checkpoint.load(path)
    warm = build_model(
        "resnet18",
        in_channels=3,
        num_classes=len(meta.class_names),
        weights=str(path),
        **{k: v for k, v in meta.model_args.items() if k not in ("in_channels", "num_classes")},
    )
    got = dict(warm.named_parameters())
    for name, p in source.named_parameters():
        assert torch.equal(p, got[name]), name
