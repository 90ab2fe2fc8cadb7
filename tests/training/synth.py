"""Tiny generated datasets in the real on-disk layouts, for training/evaluation tests.

Images carry a weak class-dependent pattern (brightness and a stripe position) so a model
can in principle learn them, but the tests never assert accuracy on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from retina.labels import OCT_CLASSES


def _oct_image(rng: np.random.Generator, label: int, w: int = 64, h: int = 48) -> Image.Image:
    a = rng.integers(0, 60, (h, w), dtype=np.uint8)
    row = 8 + 8 * label
    a[row : row + 4] = 200  # a bright "retinal layer" whose depth encodes the class
    return Image.fromarray(a, mode="L")


def _fundus_image(rng: np.random.Generator, grade: int, w: int, h: int) -> Image.Image:
    """Black border + orange disc, with ``grade`` red dots (lesions)."""
    yy, xx = np.mgrid[:h, :w]
    r = 0.45 * min(w, h)
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r**2
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[disc] = (170 + rng.integers(-20, 20), 90, 40)
    for _ in range(3 * grade):
        cy, cx = (
            rng.integers(int(h / 2 - r / 2), int(h / 2 + r / 2)),
            rng.integers(int(w / 2 - r / 2), int(w / 2 + r / 2)),
        )
        a[max(0, cy - 2) : cy + 2, max(0, cx - 2) : cx + 2] = (120, 10, 10)
    return Image.fromarray(a, mode="RGB")


def make_oct2017(
    root: Path, per_class: int = 8, patients_per_class: int = 4, test: bool = False, seed: int = 0
) -> Path:
    """``root/train/{CNV,DME,DRUSEN,NORMAL}/CLASS-PATIENT-N.jpeg`` (and ``test/`` when asked)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test") if test else ("train",):
        for ci, c in enumerate(OCT_CLASSES):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                pid = f"{1000 * (ci + 1) + (n % patients_per_class)}{'9' if split == 'test' else ''}"
                _oct_image(rng, ci).save(d / f"{c}-{pid}-{n}.jpeg", quality=90)
    return root


def make_labels_csv(root: Path, per_class: int = 8, patients_per_class: int = 4, seed: int = 0) -> Path:
    """``root/labels.csv`` (``path,label,patient_id``) beside ``root/img/*.png``."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,patient_id"]
    for ci, c in enumerate(OCT_CLASSES):
        for n in range(per_class):
            pid = f"p{ci}{n % patients_per_class}"
            rel = f"img/{c}_{n}.png"
            _oct_image(rng, ci).save(root / rel)
            lines.append(f"{rel},{c},{pid}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def make_medmnist(
    path: Path, n_train: int = 48, n_val: int = 16, n_test: int = 16, size: int = 28, seed: int = 0
) -> Path:
    """A MedMNIST-style ``.npz`` (``{train,val,test}_{images,labels}``, labels ``(N, 1)``)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        y = np.arange(n) % len(OCT_CLASSES)
        x = np.stack([np.asarray(_oct_image(rng, int(c), size, size)) for c in y])
        arrays[f"{split}_images"] = x.astype(np.uint8)
        arrays[f"{split}_labels"] = y.reshape(-1, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def make_eyepacs(root: Path, patients: int = 40, raw_every: int = 3, seed: int = 0) -> Path:
    """``root/trainLabels.csv`` + ``root/train/<patient>_<left|right>.jpeg``, grades 0-4.

    Every ``raw_every``-th patient gets raw-photo-sized images (400x300, long side > 300 px),
    the others 256x256 "publisher crops", like fundus-train.
    """
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    lines = ["image,level"]
    for p in range(patients):
        grade = p % 5
        w, h = (400, 300) if p % raw_every == 0 else (256, 256)
        for eye in ("left", "right"):
            name = f"{10 + p}_{eye}"
            _fundus_image(rng, grade, w, h).save(root / "train" / f"{name}.jpeg", quality=90)
            lines.append(f"{name},{grade}")
    (root / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    return root


def make_aptos(root: Path, n: int = 40, seed: int = 0) -> Path:
    """``root/train.csv`` (``id_code,diagnosis``) + ``root/train_images/<id_code>.png``."""
    rng = np.random.default_rng(seed)
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    lines = ["id_code,diagnosis"]
    for i in range(n):
        code = f"a{i:04x}"
        _fundus_image(rng, i % 5, 320, 240).save(root / "train_images" / f"{code}.png")
        lines.append(f"{code},{i % 5}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root
