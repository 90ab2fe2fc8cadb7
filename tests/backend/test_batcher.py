"""The micro-batcher on its own: shared forward passes, no waiting for nobody, errors reach every caller.

``wait_s`` is 30 s in these tests and results are awaited with a 10 s guard, so "completed"
means "did not wait out the window": no timing is asserted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from backend.app.services.batcher import MicroBatcher
from retina.preprocessing import get_preset, tail

SPEC = get_preset("oct_28")
WAIT_S = 30.0
GUARD_S = 10.0


class Tiny(nn.Module):
    """Linear model on a 28x28 grayscale input; counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(28 * 28, 4)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.fc(x.flatten(1))


def _image(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 28, 28), generator=g, dtype=torch.uint8)


@pytest.fixture
def model() -> Tiny:
    return Tiny().eval()


@pytest.fixture
def batcher(model: Tiny) -> Iterator[MicroBatcher]:
    b = MicroBatcher("tiny", model, tail(SPEC), temperature=2.0, device=torch.device("cpu"), max_batch=8, wait_s=WAIT_S)
    b.start()
    yield b
    b.stop()


def test_lone_request_does_not_wait(batcher: MicroBatcher, model: Tiny) -> None:
    result = batcher.submit(_image(0)).result(timeout=GUARD_S)
    assert result.batch_size == 1
    assert model.calls == [1]


def test_result_is_the_models_calibrated_softmax(batcher: MicroBatcher, model: Tiny) -> None:
    x = _image(1)
    got = batcher.submit(x).result(timeout=GUARD_S).probabilities
    with torch.inference_mode():
        want = torch.softmax(model(tail(SPEC)(x.unsqueeze(0))).double() / 2.0, dim=1)[0].numpy()
    assert got.shape == (4,)
    assert abs(got.sum() - 1) < 1e-9
    assert (abs(got - want) < 1e-6).all()


def test_request_being_decoded_joins_the_batch(batcher: MicroBatcher, model: Tiny) -> None:
    with batcher.expect() as submit_b:  # request B is still being decoded ...
        fa = batcher.submit(_image(2))  # ... when A is ready: the worker holds A's batch open
        fb = submit_b(_image(3))
    ra, rb = fa.result(timeout=GUARD_S), fb.result(timeout=GUARD_S)
    assert ra.batch_size == rb.batch_size == 2
    assert model.calls == [2]


def test_failed_decode_releases_the_held_batch(batcher: MicroBatcher) -> None:
    fa = None
    with pytest.raises(ValueError), batcher.expect():
        fa = batcher.submit(_image(4))  # the worker now waits for the expected request ...
        raise ValueError("not an image")  # ... which fails before it is submitted
    assert fa is not None
    assert fa.result(timeout=GUARD_S).batch_size == 1


def test_forward_error_reaches_every_caller(model: Tiny) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("kaboom")

    b = MicroBatcher("broken", model, broken, 1.0, torch.device("cpu"), max_batch=8, wait_s=WAIT_S)
    b.start()
    try:
        with pytest.raises(RuntimeError, match="kaboom"):
            b.submit(_image(5)).result(timeout=GUARD_S)
    finally:
        b.stop()


def test_cancelled_request_is_skipped(batcher: MicroBatcher, model: Tiny) -> None:
    with batcher.expect() as submit_kept:
        gone = batcher.submit(_image(6))
        assert gone.cancel()  # the client went away while the batch was held open
        kept = submit_kept(_image(7)).result(timeout=GUARD_S)
    assert kept.batch_size == 1
    assert model.calls == [1]
