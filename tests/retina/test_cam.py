"""CAM helpers: every method gives a non-constant map at input size; hooks are released."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retina.cam import METHODS, Explainer, UnknownCamMethod, heatmap_rgb, overlay
from retina.models import build_model, cam_layer_for


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_returns_a_map(method):
    torch.manual_seed(0)
    model = build_model("simplecnn", in_channels=1, num_classes=4).eval()
    x = torch.randn(1, 1, 32, 32)
    with Explainer(model, cam_layer_for("simplecnn"), method) as ex:
        heat = ex(x, target=2)
    assert heat.shape == (1, 32, 32)
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert heat.std() > 0
    # hooks removed: no forward hooks left on the layer
    assert not model.features[3]._forward_hooks


def test_unknown_method():
    with pytest.raises(UnknownCamMethod):
        Explainer(build_model("simplecnn"), "features.3", "magic")


def test_overlay_shapes():
    rgb = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    heat = np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)
    out = overlay(rgb, heat, alpha=0.4)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert heatmap_rgb(heat).shape == (20, 30, 3)
    with pytest.raises(ValueError):
        overlay(rgb, heat, alpha=2)
