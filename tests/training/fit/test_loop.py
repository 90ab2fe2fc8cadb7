"""The training loop: batches, the served tail, one epoch, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from retina.models import build_model
from retina.preprocessing import eval_transform, get_preset, pil_to_uint8_tensor, prepare
from training.data.loaders import TensorBatches
from training.data.pixels import PreparedDataset
from training.evaluate.calibration import softmax
from training.evaluate.predict import predict_logits, predict_probs, to_model_input
from training.fit.loop import train_one_epoch

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; these tensors are tiny anyway
    yield
    torch.set_num_threads(old)


def _data(n: int = 40, size: int = 28, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    return x, np.arange(n) % 4


def test_tensor_batches_cover_every_image_once_per_epoch_and_reshuffle():
    x, y = _data(23)
    loader = TensorBatches(x, y, 5, shuffle=True, seed=3)
    order0 = torch.cat([yb for _, yb in loader])
    assert sorted(order0.tolist()) == sorted(y.tolist())
    assert len(loader) == 5 and sum(xb.shape[0] for xb, _ in loader) == 23
    again = torch.cat([yb for _, yb in loader])
    assert torch.equal(order0, again)  # same epoch, same order (what resume relies on)
    loader.set_epoch(1)
    firsts0 = [xb[0] for xb, _ in TensorBatches(x, y, 5, shuffle=True, seed=3)]
    firsts1 = [xb[0] for xb, _ in loader]
    assert any(not torch.equal(a, b) for a, b in zip(firsts0, firsts1, strict=True))


def test_tensor_batches_pairs_images_with_their_labels():
    x, _ = _data(30)
    y = x[:, 0, 0, 0].numpy().astype(np.int64)  # label = a pixel, so pairing is checkable
    for xb, yb in TensorBatches(x, y, 7, shuffle=True, seed=1):
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)


def test_tensor_batches_drop_a_trailing_single_image_when_training():
    x, y = _data(21)
    assert len(TensorBatches(x, y, 5, shuffle=True)) == 4  # 21 = 4*5 + 1: a batch of 1 breaks BatchNorm
    assert len(TensorBatches(x, y, 5)) == 5  # evaluation keeps every image


def test_weighted_sampling_balances_classes():
    x, _ = _data(200)
    y = np.array([0] * 180 + [1] * 20)
    counts = np.bincount(y)
    w = torch.as_tensor(1.0 / counts[y])
    seen = torch.cat([yb for _, yb in TensorBatches(x, y, 50, shuffle=True, seed=0, weights=w)])
    frac1 = float((seen == 1).float().mean())
    assert 0.35 < frac1 < 0.65  # about half, instead of 10%


def test_model_input_is_the_served_transform():
    """The batch tail applied in the loop equals eval_transform on the same image."""
    spec = get_preset("oct_28")
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), mode="L") for _ in range(3)]
    batch = torch.stack([pil_to_uint8_tensor(prepare(im, spec)) for im in imgs])
    ours = to_model_input(batch, spec, CPU, channels_last=True)
    served = torch.stack([eval_transform(spec)(im) for im in imgs])
    assert type(ours) is torch.Tensor and ours.dtype == torch.float32
    torch.testing.assert_close(ours, served, rtol=0, atol=1e-6)


def test_fast_path_and_dataset_path_yield_the_same_batches():
    x, y = _data(12)
    ds = PreparedDataset(x, y)
    dl = torch.utils.data.DataLoader(ds, batch_size=5)
    for (a, ya), (b, yb) in zip(TensorBatches(x, y, 5), dl, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_train_one_epoch_learns_a_separable_toy_problem():
    torch.manual_seed(0)
    spec = get_preset("oct_28")
    y = np.arange(64) % 2
    x = torch.full((64, 1, 28, 28), 40, dtype=torch.uint8)
    x[y == 1, :, :14] = 220  # class 1: bright top half
    model = build_model("simplecnn", in_channels=1, num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = TensorBatches(x, y, 16, shuffle=True)
    first = train_one_epoch(model, loader, opt, nn.CrossEntropyLoss(), CPU, spec, progress=False)
    for epoch in range(1, 6):
        last = train_one_epoch(model, loader, opt, nn.CrossEntropyLoss(), CPU, spec, epoch=epoch, progress=False)
    assert set(first) >= {"loss", "acc", "images", "seconds", "images_per_s"}
    assert first["images"] == 64
    assert last["loss"] < first["loss"]
    probs, labels = predict_probs(model, TensorBatches(x, y, 32), CPU, spec)
    assert (probs.argmax(1) == labels).mean() == 1.0


def test_evaluate_returns_probabilities_with_temperature():
    spec = get_preset("oct_28")
    torch.manual_seed(0)
    model = build_model("simplecnn", in_channels=1, num_classes=4)
    x, y = _data(10)
    logits, labels = predict_logits(model, TensorBatches(x, y, 4), CPU, spec)
    probs, _ = predict_probs(model, TensorBatches(x, y, 4), CPU, spec, temperature=2.0)
    assert logits.shape == probs.shape == (10, 4)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, softmax(logits, 2.0), rtol=1e-6)
    assert probs.max(1).mean() < softmax(logits).max(1).mean()  # T > 1 softens
