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


def test_int8_storage_is_small_and_close(tmp_path):
    torch.manual_seed(0)
    args = {"in_channels": 3, "num_classes": 5}
    model = build_model("resnet18", **args).eval()
    spec = PRESETS["fundus_128"]
    kw = {"arch": "resnet18", "model_args": args, "task": "fundus", "class_names": list("abcde"), "preprocess": spec}
    p16 = checkpoint.save(tmp_path / "h.pt", model, half=True, **kw)
    p8 = checkpoint.save(tmp_path / "q.pt", model, int8=True, **kw)
    assert p8.stat().st_size < 0.55 * p16.stat().st_size
    loaded, _ = checkpoint.load(p8)
    w, w8 = model.conv1.weight, loaded.conv1.weight
    assert w8.dtype == torch.float32
    # per output channel, the error is at most half a quantisation step (amax / 254) plus fp16 rounding
    step = w.abs().flatten(1).amax(1) / 127
    assert ((w - w8).abs().flatten(1).amax(1) <= step * 0.5 + 1e-3).all()
    assert not torch.equal(w, w8)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(model(x).softmax(1), loaded(x).softmax(1), atol=0.05)
