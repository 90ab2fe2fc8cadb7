"""Patient-disjoint row selections of an :class:`~training.data.tables.ImageTable`.

A patient is never on two sides of a split: hold-out splits (:func:`split_indices`), K-fold
(:func:`grouped_folds`), an inner validation split of a training pool (:func:`inner_val`),
the quick-run cap (:func:`cap_by_patients`) and the label fraction (:func:`label_fraction_indices`)
all work on whole patients or within the training split.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from training.data.tables import SPLITS, DatasetError, ImageTable


def _holdout(labels: np.ndarray, groups: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient-disjoint stratified hold-out of about ``frac`` of the rows: ``(keep, held)`` positions."""
    n_groups = len(set(groups))
    # sklearn refuses more folds than the largest class has members; cap k there.
    largest = int(np.bincount(labels).max()) if len(labels) else 0
    k = int(min(max(2, round(1 / frac)), n_groups, largest))
    if k < 2:
        raise DatasetError(f"cannot hold out {frac:.0%} by patient: {len(labels)} images, {n_groups} patients")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    try:
        keep, held = next(sgkf.split(np.zeros(len(labels)), labels, groups))
    except ValueError as e:
        raise DatasetError(f"cannot split {len(labels)} images of {n_groups} patients by patient: {e}") from e
    return keep, held


def split_indices(
    table: ImageTable, *, val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 0
) -> dict[str, np.ndarray]:
    """``{"train","val","test"}`` index arrays, patient-disjoint.

    Splits the source defines (OCT2017 folders, MedMNIST npz) are kept; missing ones are
    carved out of ``train`` by patient. Raises :class:`DatasetError` on an empty split.

    Several datasets read as one (``table.parts``) that share no patient are split one by
    one with the same seed and fractions: each keeps the split it has alone, so adding a
    dataset never moves an earlier one's test patients into training (a model warm-started
    from a run on the first dataset stays honest on its test split), and every dataset has
    its own held-out part. Datasets that share patients are split jointly.
    """
    parts = table.parts
    if parts is not None and len(np.unique(parts)) > 1:
        owners: dict[str, set[int]] = defaultdict(set)
        for g, p in zip(table.groups, parts, strict=True):
            owners[str(g)].add(int(p))
        if all(len(v) == 1 for v in owners.values()):
            out = {s: [] for s in SPLITS}
            for p in np.unique(parts):
                rows = np.flatnonzero(parts == p)
                sub = split_indices(
                    replace(table.subset(rows), parts=None), val_frac=val_frac, test_frac=test_frac, seed=seed
                )
                for s in SPLITS:
                    out[s].append(rows[sub[s]])
            joined = {s: np.sort(np.concatenate(v)).astype(np.int64) for s, v in out.items()}
            check_disjoint(table, joined)
            return joined
    n = len(table)
    all_idx = np.arange(n)
    given = {s: all_idx[table.split == s] for s in SPLITS} if table.split is not None else {}
    out: dict[str, np.ndarray] = {}
    pool = given.get("train", all_idx) if given else all_idx
    if given and len(given.get("test", [])):
        out["test"] = given["test"]
    elif test_frac > 0:
        keep, held = _holdout(table.labels[pool], table.groups[pool], test_frac, seed)
        out["test"], pool = pool[held], pool[keep]
    else:
        out["test"] = np.array([], dtype=np.int64)
    if given and len(given.get("val", [])):
        out["val"] = given["val"]
    else:
        # Scale so val is val_frac of the whole, not of what is left after test.
        frac = min(0.5, val_frac / max(1e-9, 1 - (test_frac if "test" not in given else 0)))
        keep, held = _holdout(table.labels[pool], table.groups[pool], frac, seed + 1)
        out["val"], pool = pool[held], pool[keep]
    out["train"] = pool
    for s in ("train", "val") + (("test",) if test_frac > 0 or len(out["test"]) else ()):
        if len(out[s]) == 0:
            raise DatasetError(f"{table.root}: the {s} split is empty ({n} images, {len(set(table.groups))} patients)")
    check_disjoint(table, out)
    return {s: np.sort(out[s]) for s in SPLITS}


def check_disjoint(table: ImageTable, splits: dict[str, np.ndarray]) -> None:
    """Raise if any patient appears in two splits (skipped for MedMNIST's own splits)."""
    if table.source == "medmnist":
        return
    seen: dict[str, str] = {}
    for s, idx in splits.items():
        for g in set(table.groups[idx]):
            if g in seen and seen[g] != s:
                raise DatasetError(f"patient {g} is in both {seen[g]} and {s}")
            seen[g] = s


def grouped_folds(table: ImageTable, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-grouped stratified K-fold: ``[(train_idx, test_idx), ...]``."""
    n_groups = len(set(table.groups))
    if k > n_groups:
        raise DatasetError(f"{k} folds need at least {k} patients; the dataset has {n_groups}")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(a), np.sort(b)) for a, b in sgkf.split(np.zeros(len(table)), table.labels, table.groups)]


def split_summary(table: ImageTable, splits: dict[str, np.ndarray]) -> dict[str, dict[str, object]]:
    """Plain-typed sizes per split (images, patients, per-class counts) for checkpoints and logs."""
    return {
        s: {
            "images": int(len(idx)),
            "patients": int(len(set(table.groups[idx]))),
            "classes": {c: int((table.labels[idx] == i).sum()) for i, c in enumerate(table.class_names)},
        }
        for s, idx in splits.items()
    }


def inner_val(table: ImageTable, pool: np.ndarray, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split rows ``pool`` into ``(train, val)``, patient-disjoint and stratified (about ``val_frac``)."""
    sub = table.subset(pool)
    n_groups = len(set(sub.groups))
    # StratifiedGroupKFold refuses more folds than the largest class has images.
    k = int(np.clip(round(1 / max(val_frac, 1e-6)), 2, min(n_groups, np.bincount(sub.labels).max())))
    tr, va = grouped_folds(sub, k, seed=seed)[0]
    return pool[tr], pool[va]


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


def label_fraction_indices(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Positions of a stratified ``fraction`` of ``labels``: at least one per present class, seeded."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(rows))))
        keep.append(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(keep))
