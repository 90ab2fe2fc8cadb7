"""Checkpoints rebuild the exact model; the registry refuses mismatches and duplicates."""

from __future__ import annotations

import pytest
import torch

from retina import checkpoint, registry
from retina.checkpoint import CheckpointError
from retina.models import ARCHS, build_model
from retina.preprocessing import PRESETS


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("half", [False, True])
def test_round_trip_identical_logits(tmp_path, arch, half):
    torch.manual_seed(0)
    args = {"in_channels": 1, "num_classes": 4}
    model = build_model(arch, **args).eval()
    spec = PRESETS["oct_64"]
    p = checkpoint.save(
        tmp_path / "m.pt",
        model,
        arch=arch,
        model_args=args,
        task="oct",
        class_names=["CNV", "DME", "DRUSEN", "NORMAL"],
        preprocess=spec,
        half=half,
    )
    loaded, meta = checkpoint.load(p)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    if half:
        assert torch.allclose(a, b, atol=5e-2, rtol=5e-2)
    else:
        assert torch.equal(a, b)
    assert meta.arch == arch and meta.class_names == ["CNV", "DME", "DRUSEN", "NORMAL"]
    # weights_only loading works on the raw file: plain types only.
    assert torch.load(p, weights_only=True)["arch"] == arch


def test_save_refuses_non_plain_metadata(tmp_path):
    model = build_model("simplecnn")
    with pytest.raises(TypeError):
        checkpoint.save(
            tmp_path / "m.pt",
            model,
            arch="simplecnn",
            model_args={},
            task="oct",
            class_names=list("abcd"),
            preprocess=PRESETS["oct_28"],
            config={"x": object()},
        )


def test_missing_and_corrupt_checkpoints_raise(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(bad)


def test_class_count_mismatch_raises(tmp_path):
    model = build_model("simplecnn", in_channels=1, num_classes=4)
    p = checkpoint.save(
        tmp_path / "m.pt",
        model,
        arch="simplecnn",
        model_args={"in_channels": 1, "num_classes": 4},
        task="oct",
        class_names=["a", "b", "c"],
        preprocess=PRESETS["oct_28"],
    )
    with pytest.raises(CheckpointError, match="3"):
        checkpoint.load(p)


def test_registry_mismatch_is_reported(tmp_path, make_checkpoint):
    spec = registry.default_for("oct")
    p = make_checkpoint(spec, tmp_path / "ok.pt")
    _, meta = checkpoint.load(p)
    assert registry.mismatches(spec, meta) == []
    other = registry.default_for("fundus")
    problems = registry.mismatches(other, meta)
    assert any("class_names" in x for x in problems) and any("preprocess" in x for x in problems)


def test_registry_rejects_duplicates():
    spec = registry.default_for("oct")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model(spec)
    assert registry.default_for("oct") is spec and spec.task == "oct"


def test_imagenet_weights_absent_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="downloads are disabled"):
        build_model("resnet18", weights="imagenet")
