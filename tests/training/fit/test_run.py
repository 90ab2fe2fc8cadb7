"""``training.fit.run.fit`` directly: checkpoint round-trip, SMOTE isolation, label fractions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from retina import checkpoint
from tests.training import synth
from training import config as C
from training.data.bundle import prepare_data
from training.data.loaders import TensorBatches
from training.evaluate.predict import predict_logits
from training.fit import epochs, trainer
from training.fit.model import make_optimizer
from training.fit.run import fit


@pytest.fixture
def bundle_cfg(tmp_path):
    """A resolved tiny config and its prepared data (generated MedMNIST npz, its own splits)."""
    data = synth.make_medmnist(tmp_path / "octmnist.npz", n_train=60, n_val=16, n_test=16)
    cfg = C.resolve(
        "oct_simplecnn",
        ["threads=1", "progress=false", "n_bootstrap=10", "batch_size=8", "data.cache_dir="],
        {"data.path": str(data), "epochs": 2, "out": str(tmp_path / "run")},
    )
    cfg = replace(cfg, data=replace(cfg.data, cache_dir=None))
    return cfg, prepare_data(cfg)


def test_checkpoint_round_trip_gives_identical_logits(bundle_cfg, tmp_path):
    cfg, bundle = bundle_cfg
    s = bundle.splits
    res = fit(cfg, bundle, tmp_path / "run", train_idx=s["train"], val_idx=s["val"], test_idx=s["test"])
    loaded, meta = checkpoint.load(res.best_path)
    assert meta.arch == "simplecnn" and meta.preprocess == bundle.spec
    assert meta.metrics["best_epoch"] == res.best_epoch
    x = bundle.images[torch.as_tensor(s["test"])]
    y = bundle.table.labels[s["test"]]
    trained = res.model.to(memory_format=torch.contiguous_format)
    a, _ = predict_logits(trained, TensorBatches(x, y, 16), torch.device("cpu"), bundle.spec)
    b, _ = predict_logits(loaded, TensorBatches(x, y, 16), torch.device("cpu"), bundle.spec)
    np.testing.assert_array_equal(a, b)
    # The stored test metrics are those of the stored model and temperature.
    assert meta.metrics["test"]["n"] == len(y)
    assert meta.temperature == pytest.approx(res.calibration["temperature"])


def test_half_checkpoint_is_smaller_and_loads_in_float32(bundle_cfg, tmp_path):
    cfg, bundle = bundle_cfg
    cfg = replace(cfg, half=True, epochs=1)
    s = bundle.splits
    res = fit(cfg, bundle, tmp_path / "h", train_idx=s["train"], val_idx=s["val"], test_idx=s["test"])
    raw = checkpoint.read(res.best_path)
    assert raw["dtype"] == "float16"
    model, _ = checkpoint.load(res.best_path)
    assert next(model.parameters()).dtype == torch.float32


def test_smote_sees_only_the_training_split(bundle_cfg, tmp_path, monkeypatch):
    cfg, bundle = bundle_cfg
    cfg = replace(cfg, imbalance="smote", epochs=1)
    s = bundle.splits
    # Make the training split imbalanced by dropping most of class 0..2.
    y = bundle.table.labels
    train = np.concatenate([s["train"][y[s["train"]] == 3], s["train"][y[s["train"]] != 3][::4]])
    before = bundle.images.clone()
    seen = {}
    real = trainer.smote_resample

    def spy(images, labels, seed=0):
        seen["images"], seen["labels"] = images.clone(), labels.copy()
        out = real(images, labels, seed=seed)
        seen["out_counts"] = np.bincount(out[1]).tolist()
        return out

    monkeypatch.setattr(trainer, "smote_resample", spy)
    res = fit(cfg, bundle, tmp_path / "s", train_idx=train, val_idx=s["val"], test_idx=s["test"])
    assert np.array_equal(seen["labels"], y[train])
    assert torch.equal(seen["images"], bundle.images[torch.as_tensor(train)])
    assert len(set(seen["out_counts"])) == 1 and seen["out_counts"][0] == np.bincount(y[train]).max()
    assert torch.equal(bundle.images, before)  # val/test (and train) pixels untouched
    assert res.metrics["val"]["n"] == len(s["val"]) and res.metrics["test"]["n"] == len(s["test"])
    assert res.metrics["val"]["per_class"]["NORMAL"]["support"] == int((y[s["val"]] == 3).sum())


def test_label_fraction_trains_on_fewer_images(bundle_cfg, tmp_path, caplog):
    cfg, bundle = bundle_cfg
    cfg = replace(cfg, label_fraction=0.1, epochs=1)
    s = bundle.splits
    with caplog.at_level("INFO"):
        res = fit(cfg, bundle, tmp_path / "f", train_idx=s["train"], val_idx=s["val"], test_idx=s["test"])
    assert "label_fraction=0.1: 8 of 60 training images" in caplog.text  # round(0.1 * 15) = 2 per class
    _, meta = checkpoint.load(res.best_path)
    assert meta.data["label_fraction"] == 0.1
    assert meta.metrics["val"]["n"] == len(s["val"])  # evaluation splits keep every image


def test_frozen_backbone_keeps_its_batchnorm_statistics():
    """Linear probe / frozen ImageNet backbone: only the head learns, BN running stats stay put."""
    from retina.models import build_model
    from retina.preprocessing import get_preset

    torch.manual_seed(0)
    spec = get_preset("oct_28").replace(size=32)
    model = build_model("resnet18", in_channels=1, num_classes=2, freeze_backbone=True)
    bn_before = model.bn1.running_mean.clone()
    head_before = model.fc.weight.detach().clone()
    x = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8)
    y = np.arange(16) % 2
    cfg = C.resolve("oct_simplecnn", ["progress=false"])
    opt = make_optimizer(cfg, model)
    epochs._train_epoch(
        model,
        TensorBatches(x, y, 8, shuffle=True),
        opt,
        torch.nn.CrossEntropyLoss(),
        torch.device("cpu"),
        spec,
        1,
        cfg,
        False,
    )
    assert torch.equal(model.bn1.running_mean, bn_before)
    assert not torch.equal(model.fc.weight, head_before)
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc"))
