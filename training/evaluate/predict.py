"""Forward passes over prepared batches: logits, temperature-scaled probabilities, and the torch CPU threads.

Shared by the training loop (validation each epoch), ``python -m training.evaluate`` and
``training.ship.quantize``; the input path is the served one (``tail(spec)`` on the device).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retina.preprocessing import PreprocessSpec, tail
from retina.runtime import usable_cores
from training.data.loaders import Batch
from training.evaluate.calibration import softmax


def set_threads(n: int) -> int:
    """Set torch's intra-op threads (``0`` = one per core this process may use); returns it."""
    if n <= 0:
        n = usable_cores()
    torch.set_num_threads(n)
    return n


def to_model_input(
    x: torch.Tensor, spec: PreprocessSpec, device: torch.device, *, channels_last: bool = False
) -> torch.Tensor:
    """uint8 ``(N, C, S, S)`` -> normalised float32 on ``device`` via the served ``tail(spec)``.

    The uint8 batch is moved first (4x fewer bytes), then normalised on the device.
    """
    x = x.to(device, non_blocking=True)
    x = tail(spec)(x).as_subclass(torch.Tensor)  # plain tensor: no tv_tensors dispatch in the model
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(device: torch.device, amp: bool) -> torch.autocast:
    """bf16 autocast on ``device`` when ``amp``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    spec: PreprocessSpec,
    *,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, K)`` float32 and labels ``(N,)`` int64 for every batch of ``loader``."""
    model.eval()
    outs, labels = [], []
    for x, y in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False, mininterval=1):
        x = to_model_input(x, spec, device, channels_last=channels_last)
        with autocast(device, amp):
            outs.append(model(x).float().cpu())
        labels.append(torch.as_tensor(y))
    if not outs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    return torch.cat(outs).numpy(), torch.cat(labels).long().numpy()


def predict_probs(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    spec: PreprocessSpec,
    *,
    temperature: float = 1.0,
    **kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, K)`` in ``[0, 1]`` (rows sum to 1) and labels ``(N,)``."""
    logits, labels = predict_logits(model, loader, device, spec, **kw)
    if logits.size == 0:
        return logits, labels
    return softmax(logits, temperature), labels
