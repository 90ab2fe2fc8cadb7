"""A run's data: :class:`~training.config.TrainConfig` -> :class:`DataBundle` (table, patient-disjoint splits, pixels).

``read_tables`` -> optional patient-level cap (``data.max_images``) -> ``split_indices``
(patient-disjoint) -> ``prepare_all`` (``prepare()`` once per image, cached). How the training
split is then drawn (weights, SMOTE, label fractions) is :mod:`training.data.sampling`'s and
:mod:`training.data.splits`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retina.preprocessing import PreprocessSpec
from training import config as config_mod
from training.config import ConfigError, DataConfig, TrainConfig
from training.data.pixels import prepare_all
from training.data.splits import cap_by_patients, split_indices, split_summary
from training.data.tables import ImageTable, read_tables

logger = logging.getLogger(__name__)


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


def select_rows(data: DataConfig, table: ImageTable) -> ImageTable:
    """The table a run trains on: the whole one, or the ``data.max_images`` patient-level cap."""
    if data.max_images is None:
        return table
    idx = cap_by_patients(table, int(data.max_images), seed=data.seed)
    logger.info("data.max_images=%d: kept %d of %d images (whole patients)", data.max_images, len(idx), len(table))
    return table.subset(idx)


def read_config_table(cfg: TrainConfig, path: str | Path | None = None) -> ImageTable:
    """The config's dataset (or ``path``) read as one table, before the cap."""
    d = cfg.data
    path = path or d.path
    if not path:
        raise ConfigError("no dataset: pass --data PATH or set data.path")
    return read_tables(path, d.format, label_scheme=d.label_scheme, task=cfg.task or None, patients=d.patients)


def prepare_data(cfg: TrainConfig, *, splits: bool = True) -> DataBundle:
    """Read, cap, split (patient-disjoint) and prepare the config's dataset."""
    full = read_config_table(cfg)
    d = cfg.data
    table = select_rows(d, full)
    spec = config_mod.preprocess_spec(cfg)
    parts = split_indices(table, val_frac=d.val_frac, test_frac=d.test_frac, seed=d.seed) if splits else {}
    images = prepare_all(table, spec, cache_dir=Path(d.cache_dir) if d.cache_dir else None)
    meta = {
        "source": table.source,
        "root": table.root,
        "format": d.format,
        "label_scheme": table.label_scheme,
        "fingerprint": full.fingerprint(),
        "fingerprint_used": table.fingerprint(),
        "n_images": len(table),
        "n_patients": len(set(table.groups)),
        "class_counts": table.class_counts(),
        "max_images": d.max_images,
        "split_seed": d.seed,
        "val_frac": d.val_frac,
        "test_frac": d.test_frac,
    }
    if parts:
        meta["splits"] = split_summary(table, parts)
        for s, info in meta["splits"].items():
            logger.info(
                "split %-5s %5d images, %4d patients, classes %s", s, info["images"], info["patients"], info["classes"]
            )
    return DataBundle(table=table, splits=parts, images=images, spec=spec, meta=meta)
