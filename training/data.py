"""Data preparation for a training run: config -> :class:`DataBundle` (table, patient-disjoint splits, pixels).

``read_tables`` -> optional patient-level cap (``data.max_images``) -> ``split_indices``
(patient-disjoint) -> ``load_prepared`` (``prepare()`` once per image, cached); plus the
training-split resampling helpers (SMOTE, class weights, domain-balanced draws, label fractions).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retina.preprocessing import PreprocessSpec
from training import config as config_mod
from training.config import ConfigError
from training.datasets import (
    ImageTable,
    load_prepared,
    read_tables,
    split_indices,
    split_summary,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data


@dataclass
class DataBundle:
    """A dataset ready for training: the (capped) table, its splits and prepared pixels.

    ``images`` is uint8 ``(N, C, S, S)`` for every row of ``table``; split arrays index it.
    """

    table: ImageTable
    splits: dict[str, np.ndarray]
    images: torch.Tensor
    spec: PreprocessSpec
    meta: dict[str, Any] = field(default_factory=dict)


def _units(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices per patient, in order of first appearance of the sorted ids."""
    _, inverse = np.unique(groups.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)


def cap_by_patients(table: ImageTable, max_images: int, seed: int = 0) -> np.ndarray:
    """Row indices of a class-stratified subset of about ``max_images`` images, whole patients only.

    Patients are visited in a seeded random order and taken (all their images) while one of
    their classes is under its share ``ceil(max_images / K)`` and the total stays within the
    cap. Never splits a patient, so the later patient-disjoint split stays leak-free. Where
    the source defines splits (OCT2017 folders, MedMNIST), each split is capped in proportion
    to its size so none of them disappears.
    """
    if max_images >= len(table):
        return np.arange(len(table))
    rng = np.random.default_rng(seed)
    pools: list[tuple[np.ndarray, int]] = []
    if table.split is not None:
        for s in np.unique(table.split):
            rows = np.flatnonzero(table.split == s)
            pools.append((rows, max(len(table.class_names), math.ceil(max_images * len(rows) / len(table)))))
    else:
        pools.append((np.arange(len(table)), max_images))
    chosen: list[np.ndarray] = []
    for rows, budget in pools:
        k = len(np.unique(table.labels[rows]))
        share = math.ceil(budget / max(1, k))
        counts = np.zeros(len(table.class_names), dtype=np.int64)
        total = 0
        units = _units(table.groups[rows])
        for u in rng.permutation(len(units)):
            r = rows[units[u]]
            if total + len(r) > budget:
                continue
            classes = np.unique(table.labels[r])
            if np.any(counts[classes] < share):
                chosen.append(r)
                counts += np.bincount(table.labels[r], minlength=len(counts))
                total += len(r)
            if total >= budget:
                break
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def select_rows(cfg: dict[str, Any], table: ImageTable) -> ImageTable:
    """The table a run trains on: the whole one, or the ``data.max_images`` patient-level cap."""
    cap = cfg["data"]["max_images"]
    if cap is None:
        return table
    idx = cap_by_patients(table, int(cap), seed=cfg["data"]["seed"])
    logger.info("data.max_images=%d: kept %d of %d images (whole patients)", cap, len(idx), len(table))
    return table.subset(idx)


def read_config_table(cfg: dict[str, Any], path: str | Path | None = None) -> ImageTable:
    d = cfg["data"]
    path = path or d["path"]
    if not path:
        raise ConfigError("no dataset: pass --data PATH or set data.path")
    return read_tables(
        path, d["format"], label_scheme=d["label_scheme"], task=cfg["task"] or None, patients=d["patients"]
    )


def prepare_data(cfg: dict[str, Any], *, splits: bool = True) -> DataBundle:
    """Read, cap, split (patient-disjoint) and prepare the config's dataset."""
    full = read_config_table(cfg)
    table = select_rows(cfg, full)
    spec = config_mod.preprocess_spec(cfg)
    d = cfg["data"]
    parts = split_indices(table, val_frac=d["val_frac"], test_frac=d["test_frac"], seed=d["seed"]) if splits else {}
    cache = Path(d["cache_dir"]) if d["cache_dir"] else None
    images = load_prepared(table, np.arange(len(table)), spec, cache_dir=cache, progress=cfg["progress"])
    meta = {
        "source": table.source,
        "root": table.root,
        "format": d["format"],
        "label_scheme": table.label_scheme,
        "fingerprint": full.fingerprint(),
        "fingerprint_used": table.fingerprint(),
        "n_images": len(table),
        "n_patients": len(set(table.groups)),
        "class_counts": table.class_counts(),
        "max_images": d["max_images"],
        "split_seed": d["seed"],
        "val_frac": d["val_frac"],
        "test_frac": d["test_frac"],
    }
    if parts:
        meta["splits"] = split_summary(table, parts)
        for s, info in meta["splits"].items():
            logger.info(
                "split %-5s %5d images, %4d patients, classes %s", s, info["images"], info["patients"], info["classes"]
            )
    return DataBundle(table=table, splits=parts, images=images, spec=spec, meta=meta)


def label_fraction_indices(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Positions of a stratified ``fraction`` of ``labels``: at least one per present class, seeded."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(rows))))
        keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))


def smote_resample(images: torch.Tensor, labels: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Oversample minority classes with imbalanced-learn's SMOTE on flattened uint8 images.

    Only ever called on the *training* split after splitting, so no synthetic image mixes
    validation/test pixels. Synthetic pixels are rounded back to uint8 ``(M, C, S, S)``;
    the originals come first, unchanged. Classes with a single image cannot be interpolated:
    they are duplicated (``RandomOverSampler``) instead, with a warning.
    """
    from imblearn.over_sampling import SMOTE, RandomOverSampler

    counts = np.bincount(labels)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() == present.max():
        return images, labels
    n, c, h, w = images.shape
    x = images.reshape(n, -1).numpy().astype(np.float32)
    k = int(min(5, present.min() - 1))
    if k < 1:
        logger.warning("SMOTE needs >= 2 images per class; duplicating the rarest instead")
        sampler: Any = RandomOverSampler(random_state=seed)
    else:
        sampler = SMOTE(k_neighbors=k, random_state=seed)
    xr, yr = sampler.fit_resample(x, labels)
    xr = np.clip(np.rint(xr), 0, 255).astype(np.uint8).reshape(-1, c, h, w)
    logger.info("SMOTE: train split %s -> %s", counts.tolist(), np.bincount(yr).tolist())
    return torch.from_numpy(xr), np.asarray(yr, dtype=np.int64)


def image_domains(table: ImageTable, idx: np.ndarray) -> np.ndarray:
    """``(len(idx),)`` str: the dataset of each row and whether it is a small square crop or a photo.

    EyePACS as shared here mixes 256x256 publisher-normalised crops with raw camera photos,
    and users upload raw photos; a second dataset (IDRiD) is another camera again.
    """
    parts = table.parts[idx] if table.parts is not None else np.zeros(len(idx), dtype=np.int64)
    w, h = table.sizes[idx, 0], table.sizes[idx, 1]
    look = np.where((w == h) & (w <= 256), "crop", "photo")
    return np.asarray([f"{p}:{k}" for p, k in zip(parts, look, strict=True)])


def domain_sample_weights(domains: np.ndarray, power: float) -> torch.Tensor:
    """Per-row draw weights giving each domain a share proportional to ``n_domain ** power``.

    ``power`` 1 keeps the natural mix, 0 draws every domain equally; in between (0.5) the
    few raw photos are seen far more often than their count alone would give, without
    letting a 300-photo dataset be repeated as often as a 4,000-image one.
    """
    names, inverse, counts = np.unique(domains, return_inverse=True, return_counts=True)
    share = counts.astype(np.float64) ** power
    share /= share.sum()
    return torch.as_tensor(share[inverse] / counts[inverse])


def class_weights(labels: np.ndarray, k: int, power: float = 1.0) -> torch.Tensor:
    """``(N / (K * count_c)) ** power`` per class (sklearn's "balanced" at power 1); 0 for absent classes.

    ``power`` < 1 tempers the weights: on EyePACS grades (74% grade 0, 1.8% grade 4) full inverse
    frequency weighs grade 4 about 40x grade 0, and a model from scratch first collapses onto
    the rarest grades; square-root weights (power 0.5) keep the ratio near 6x.
    """
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (max(1, (counts > 0).sum()) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w**power, dtype=torch.float32)
