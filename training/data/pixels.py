"""Pixels: every image of a table ``prepare()``d once to uint8 ``(N, C, S, S)``, cached on disk.

The normalising tail (``retina.preprocessing.tail``) is *not* applied here: the training loop
applies it per batch on the device, exactly as serving applies it to an upload.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from retina.preprocessing import ImageDecodeError, PreprocessSpec, load_image, pil_to_uint8_tensor, prepare
from retina.serialize import atomic_write
from training.data.tables import DatasetError, ImageTable

logger = logging.getLogger(__name__)


def _prepare_one(args: tuple[str, PreprocessSpec]) -> np.ndarray:
    path, spec = args
    try:
        img = load_image(path)
    except (ImageDecodeError, OSError) as e:
        raise DatasetError(f"{path}: unreadable image ({e})") from e
    return pil_to_uint8_tensor(prepare(img, spec)).numpy()


def _spec_key(spec: PreprocessSpec) -> str:
    return hashlib.sha256(repr(sorted(spec.to_dict().items())).encode()).hexdigest()[:12]


def prepare_all(
    table: ImageTable, spec: PreprocessSpec, *, cache_dir: Path | None = None, workers: int | None = None
) -> torch.Tensor:
    """``prepare()`` every image once: uint8 ``(N, C, S, S)``, cached on disk when asked.

    The cache key is the table fingerprint plus the spec, so a changed dataset or spec
    never reuses stale pixels.
    """
    cache: Path | None = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{table.source}-{table.fingerprint()[:16]}-{_spec_key(spec)}.npy"
        if cache.is_file():
            arr = np.load(cache)
            if arr.shape == (len(table), spec.channels, spec.size, spec.size):
                logger.info("prepared images from cache %s", cache)
                return torch.from_numpy(arr)
    out = np.empty((len(table), spec.channels, spec.size, spec.size), dtype=np.uint8)
    if table.images is not None:
        mode = spec.mode if table.images.ndim == 4 else "L"
        for i in tqdm(range(len(table)), desc="prepare", unit="img", mininterval=2):
            out[i] = pil_to_uint8_tensor(prepare(Image.fromarray(table.images[i]).convert(mode), spec)).numpy()
    else:
        workers = workers or min(4, os.cpu_count() or 1)
        jobs = [(p, spec) for p in table.paths]
        if workers > 1 and len(jobs) > 64:
            with ProcessPoolExecutor(workers) as ex:
                it = ex.map(_prepare_one, jobs, chunksize=16)
                for i, a in enumerate(tqdm(it, total=len(jobs), desc="prepare", unit="img", mininterval=2)):
                    out[i] = a
        else:
            for i, job in enumerate(tqdm(jobs, desc="prepare", unit="img", mininterval=2)):
                out[i] = _prepare_one(job)
    if cache is not None:
        with atomic_write(cache, suffix=".tmp.npy") as tmp:  # np.save appends .npy to any other name
            np.save(tmp, out)
    return torch.from_numpy(out)


def check_prepared(images: torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate prepared images uint8 ``(N, C, S, S)`` and labels ``(N,)``; labels as int64 tensor."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N,C,S,S), got {images.dtype} {tuple(images.shape)}")
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) != len(images):
        raise ValueError("images and labels differ in length")
    return images, y


class PreparedDataset(torch.utils.data.Dataset):
    """Prepared uint8 images ``(N, C, S, S)`` with labels ``(N,)``.

    ``__getitem__`` returns ``(transform(x) if transform else x, label)`` where ``x`` stays
    uint8 ``(C, S, S)``: the normalising tail is applied per batch by the training loop,
    exactly as serving applies it.
    """

    def __init__(self, images: torch.Tensor, labels: np.ndarray | torch.Tensor, transform=None) -> None:
        self.images, self.labels = check_prepared(images, labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        return (self.transform(x) if self.transform is not None else x), int(self.labels[i])
