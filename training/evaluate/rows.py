"""Which rows of a dataset a checkpoint is scored on: its training test split recomputed, or all of them.

When the dataset's fingerprint equals the training one, the training split is recomputed
from the checkpoint's saved data settings (same cap, fractions and seed) and the default
split is ``test``; on any other dataset (e.g. fundus-dev for a model trained on
fundus-train) the default is ``all``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from retina import checkpoint
from training.config import DataConfig
from training.data.bundle import select_rows
from training.data.splits import split_indices
from training.data.tables import DatasetError, ImageTable

logger = logging.getLogger("training.evaluate")

RAW_LONG_SIDE = 300  # fundus "raw photo" = long side > 300 px (the publisher's crops are 256 px)


def raw_mask(table: ImageTable, idx: np.ndarray) -> np.ndarray:
    """``(len(idx),)`` bool: images whose original long side exceeds :data:`RAW_LONG_SIDE`."""
    return table.sizes[idx].max(axis=1) > RAW_LONG_SIDE


def resolve_rows(
    meta: checkpoint.CheckpointMeta, table: ImageTable, split: str | None
) -> tuple[ImageTable, np.ndarray, str, dict[str, Any]]:
    """Which rows to score: ``(table, idx, split, info)``; see the module docstring."""
    d = DataConfig.from_saved((meta.config or {}).get("data"))
    same = bool(meta.data.get("fingerprint")) and table.fingerprint() == meta.data["fingerprint"]
    cv_model = str(meta.data.get("evaluation", "")).lower().find("cv") >= 0
    info: dict[str, Any] = {"fingerprint_matches_training": same}
    if same and cv_model:
        logger.warning(
            "this model was trained on all of this dataset (CV final model); its CV metrics are in the checkpoint"
        )
    if split is None:
        split = "test" if same and not cv_model else "all"
    if same:
        table = select_rows(d, table)  # the same patient-level cap as training
    if split == "all":
        return table, np.arange(len(table)), split, info
    if not same:
        logger.warning(
            "dataset differs from the training data: split %r is a fresh patient-disjoint split of it", split
        )
    parts = split_indices(table, val_frac=d.val_frac, test_frac=d.test_frac, seed=d.seed)
    if split not in parts or len(parts[split]) == 0:
        raise DatasetError(f"split {split!r} is empty for {table.root}")
    info["split_source"] = "training split recomputed" if same else "fresh split of a different dataset"
    return table, parts[split], split, info
