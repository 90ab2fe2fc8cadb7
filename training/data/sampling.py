"""How the training split is drawn: class weights, SMOTE, domain-balanced draws, one prevalence per domain.

Only ever applied to the *training* rows, after the patient-disjoint split.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from training.data.tables import ImageTable

logger = logging.getLogger(__name__)


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


def prevalence_weights(domains: np.ndarray, positive: np.ndarray, target: float) -> torch.Tensor:
    """Per-row factors ``(N,)`` that make every domain's draws ``target`` positive, its share kept.

    Why: the datasets here were collected at very different prevalences (referable DR: EyePACS
    19 %, ODIR 39 % after its 1-in-4 sampling of other eyes, IDRiD 63 %), and a network tells
    the cameras apart at a glance. Drawn as they come, the camera itself predicts the label, and
    the network learns it: v3 ran its probabilities high on every non-EyePACS camera (IDRiD
    specificity 0.23 at the served point, AUC 0.96). With one prevalence in every domain the
    camera carries no information about the grade; only the retina does. Multiply these into
    the domain weights: within a domain the factors average to 1, so its share of draws stays.
    A domain with no positive (or no negative) row is left as it is.
    """
    f = np.ones(len(domains), dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    for d in np.unique(domains):
        rows = domains == d
        p = positive[rows].mean()
        if 0 < p < 1:
            f[rows & positive] = target / p
            f[rows & ~positive] = (1 - target) / (1 - p)
    return torch.as_tensor(f)


def class_weights(labels: np.ndarray, k: int, power: float = 1.0) -> torch.Tensor:
    """``(N / (K * count_c)) ** power`` per class (sklearn's "balanced" at power 1); 0 for absent classes.

    ``power`` < 1 tempers the weights: on EyePACS grades (74% grade 0, 1.8% grade 4) full inverse
    frequency weighs grade 4 about 40x grade 0, and a model from scratch first collapses onto
    the rarest grades; square-root weights (power 0.5) keep the ratio near 6x.
    """
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (max(1, (counts > 0).sum()) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w**power, dtype=torch.float32)
