"""Helpers for the API tests: a small extra checkpoint, a PNG bomb, offline reference, metrics parsing."""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient

from backend.app.core.config import Settings
from backend.app.main import create_app
from retina import checkpoint
from retina.gate import GATE_FILE
from retina.labels import OCT_CLASSES
from retina.models import build_model
from retina.paths import DEFAULT_MODELS_DIR
from retina.preprocessing import decode_image, eval_transform, get_preset
from retina.registry import ModelSpec
from tests.support import save_random_checkpoint

SMALL_ID = "oct-small"
SMALL_TEMPERATURE = 2.0


def save_small_model(path: Path) -> Path:
    """A SimpleCNN OCT checkpoint (64 px) with a temperature and a NaN metric."""
    torch.manual_seed(1)
    args = {"in_channels": 1, "num_classes": len(OCT_CLASSES)}
    return checkpoint.save(
        path,
        build_model("simplecnn", **args),
        arch="simplecnn",
        model_args=args,
        task="oct",
        class_names=list(OCT_CLASSES),
        preprocess=get_preset("oct_64"),
        metrics={"accuracy": float("nan"), "macro_f1": 0.5, "per_class": {"CNV": float("inf")}},
        calibration={"temperature": SMALL_TEMPERATURE},
        card={"description": "tiny test model", "limits": ["random weights"]},
        version="0.0.1-test",
    )


def save_lively_checkpoint(spec: ModelSpec, path: Path, seed: int = 0) -> Path:
    """A random-weight checkpoint whose output depends on its input (see tests/conftest.py)."""
    return save_random_checkpoint(spec, path, seed)


@contextmanager
def app_client(settings: Settings) -> Iterator[TestClient]:
    """``TestClient`` of ``create_app(settings)`` with its lifespan running (models loaded)."""
    with TestClient(create_app(settings)) as c:
        yield c


def base_settings(models_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "models_dir": models_dir,
        "device": "cpu",
        "torch_threads": 2,
        "decode_threads": 2,
        # Long enough that concurrent test requests really share batches; a lone request
        # does not wait (nobody else is being decoded).
        "batch_wait_ms": 50,
        "log_level": "INFO",
        # In-memory audit log per app: tests never write runs/audit.sqlite into the checkout.
        "audit_db": "sqlite://",
        # The shipped image gate: tests exercise the production path (real images pass it).
        "gate_file": DEFAULT_MODELS_DIR / GATE_FILE,
        # No key unless a test sets one: the explicit loopback opt-out (TestClient never leaves the process).
        "insecure_no_auth": True,
    }
    values.update(overrides)
    return Settings(**values)


def write_png_bomb(path: Path, side: int = 30000) -> Path:
    """A valid ``side x side`` 1-bit PNG of zeros: ~100 KB on disk, 900 Mpixel when decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def encode(img: Any, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@cache
def _offline_model(path: str) -> tuple[torch.nn.Module, checkpoint.CheckpointMeta]:
    return checkpoint.load(path)


def offline_probabilities(ckpt: Path, image_bytes: bytes) -> dict[str, float]:
    """What the model says about these bytes without the service: the reference for /predict."""
    model, meta = _offline_model(str(ckpt))
    x = eval_transform(meta.preprocess)(decode_image(image_bytes))
    with torch.inference_mode():
        p = torch.softmax(model(x.unsqueeze(0)) / meta.temperature, dim=1)[0].double().numpy()
    return dict(zip(meta.class_names, p.tolist(), strict=True))


def assert_probabilities_close(got: dict[str, float], want: dict[str, float], atol: float = 1e-5) -> None:
    assert list(got) == list(want)
    np.testing.assert_allclose(list(got.values()), list(want.values()), atol=atol, rtol=0)


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample ``name{labels...}`` (labels given must match; 0 when absent)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"^([^{\s]+)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total
