"""Dataset readers: a folder or file on disk -> :class:`ImageTable` (paths, labels, patients; no pixels yet).

Formats (``read_table(path, fmt="auto")``):

* ``medmnist``: MedMNIST ``.npz`` (``octmnist.npz``, ``octmnist_128.npz``...) with keys
  ``{train,val,test}_{images,labels}``; label order 0 CNV, 1 DME, 2 DRUSEN, 3 NORMAL.
* ``oct2017``: Kermany folders ``ROOT/{train,test[,val]}/{CNV,DME,DRUSEN,NORMAL}/CLASS-PATIENT-N.jpeg``;
  the patient id is parsed from the file name.
* ``csv``: ``labels.csv`` beside the images with ``path,label[,patient_id]`` (``../shared/data`` layout).
* ``eyepacs``: Kaggle DR ``trainLabels.csv`` (``image,level``), images ``<image>.jpeg`` in ``train/``
  or beside the CSV; patient = the part of ``image`` before ``_left``/``_right``.
* ``aptos``: APTOS 2019 ``train.csv`` (``id_code,diagnosis``), images ``<id_code>.png`` in
  ``train_images/``, ``train/`` or beside the CSV; APTOS has no patient ids, so each image is its own group.

Every problem is a :class:`DatasetError` naming the file, the line and what was expected;
nothing is skipped silently. Splits are in :mod:`training.data.splits`, pixels in
:mod:`training.data.pixels`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from retina.labels import OCT_CLASSES, SCHEME_CLASSES, map_grade

logger = logging.getLogger(__name__)

FORMATS = ("medmnist", "oct2017", "csv", "eyepacs", "aptos")
SPLITS = ("train", "val", "test")
_OCT_NAME = re.compile(r"^(?P<cls>[A-Za-z]+)-(?P<pid>[^-]+)-(?P<n>[^-.]+)\.(jpe?g|png|tiff?|bmp)$", re.IGNORECASE)
_IMAGE_EXT = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".webp")


class DatasetError(ValueError):
    """A dataset is missing, malformed or yields an empty split; the message says where."""


@dataclass
class ImageTable:
    """An index of a labelled image collection, before pixels are loaded.

    Attributes:
        paths: absolute image paths (``""`` for npz-backed rows).
        labels: ``(N,)`` int64 class index under ``label_scheme``.
        groups: ``(N,)`` str patient id (the image id where the format has none).
        class_names: names in label order.
        task: ``"oct"`` or ``"fundus"``.
        split: ``(N,)`` str ``train``/``val``/``test`` where the source defines it, else ``None``.
        images: ``(N, H, W)`` or ``(N, H, W, C)`` uint8 for npz sources, else ``None``.
        sizes: ``(N, 2)`` int original ``(width, height)``.
        source: one of :data:`FORMATS`.
        root: the dataset root.
        label_scheme: fundus scheme (``grade``...) or ``None`` for OCT.
        parts: ``(N,)`` int index of the dataset each row came from when several were read
            as one (:func:`read_tables`), else ``None``.
    """

    paths: list[str]
    labels: np.ndarray
    groups: np.ndarray
    class_names: tuple[str, ...]
    task: str
    split: np.ndarray | None
    images: np.ndarray | None
    sizes: np.ndarray
    source: str
    root: str
    label_scheme: str | None = None
    parts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageTable:
        idx = np.asarray(idx, dtype=np.int64)
        return replace(
            self,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            groups=self.groups[idx],
            split=None if self.split is None else self.split[idx],
            images=None if self.images is None else self.images[idx],
            sizes=self.sizes[idx],
            parts=None if self.parts is None else self.parts[idx],
        )

    def fingerprint(self) -> str:
        """sha256 over (relative path or pixels, label, group): stable across machines."""
        h = hashlib.sha256()
        h.update(f"{self.source}|{self.task}|{self.label_scheme}|{','.join(self.class_names)}\n".encode())
        if self.images is not None:
            h.update(np.ascontiguousarray(self.images).tobytes())
            h.update(self.labels.astype(np.int64).tobytes())
        else:
            for p, y, g in zip(self.paths, self.labels, self.groups, strict=True):
                h.update(f"{os.path.relpath(p, self.root)}\t{int(y)}\t{g}\n".encode())
        return h.hexdigest()

    def class_counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.class_names)}


def detect_format(path: Path) -> str:
    if path.is_file():
        if path.suffix == ".npz":
            return "medmnist"
        if path.name == "trainLabels.csv":
            return "eyepacs"
        if path.suffix == ".csv":
            header = path.read_text(errors="replace").splitlines()[:1]
            if header and "id_code" in header[0]:
                return "aptos"
            return "csv"
        raise DatasetError(f"{path}: cannot tell the dataset format from this file")
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    if (path / "trainLabels.csv").is_file():
        return "eyepacs"
    if (path / "train.csv").is_file():
        return "aptos"
    if (path / "labels.csv").is_file():
        return "csv"
    if any((path / s).is_dir() for s in SPLITS):
        return "oct2017"
    npz = sorted(path.glob("*.npz"))
    if len(npz) == 1:
        return "medmnist"
    raise DatasetError(
        f"{path}: expected one of trainLabels.csv (EyePACS), train.csv (APTOS), labels.csv, "
        "{train,test,val}/<CLASS>/ folders (OCT2017) or a MedMNIST .npz"
    )


def read_table(
    path: str | Path, fmt: str = "auto", *, label_scheme: str = "grade", task: str | None = None
) -> ImageTable:
    """Index a dataset; see the module docstring for formats. Raises :class:`DatasetError`."""
    path = Path(path).expanduser().resolve()
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")
    reader = {
        "medmnist": _read_medmnist,
        "oct2017": _read_oct2017,
        "csv": _read_labels_csv,
        "eyepacs": _read_eyepacs,
        "aptos": _read_aptos,
    }[fmt]
    table = reader(path, label_scheme)
    if task is not None and table.task != task:
        raise DatasetError(f"{path}: dataset is {table.task}, but the config expects {task}")
    if len(table) == 0:
        raise DatasetError(f"{path}: no labelled images found")
    logger.info(
        "read %s dataset %s: %d images, %d patients, classes %s",
        fmt,
        path,
        len(table),
        len(set(table.groups)),
        table.class_counts(),
    )
    return table


def read_tables(
    paths: str | Path | list[str | Path],
    fmt: str = "auto",
    *,
    label_scheme: str = "grade",
    task: str | None = None,
    patients: str = "shared",
) -> ImageTable:
    """One table from one dataset or several of one task (``a,b`` or a list): rows concatenated.

    ``patients="shared"`` keeps groups as they are, so a patient id found in two folders (two
    Kermany sets share patients) is one group across both and never straddles a split.
    ``patients="per_dataset"`` prefixes each group with its folder's name: datasets from
    different sources number their patients independently (ODIR's patient 1005 is not
    EyePACS's 1005_left), and a spurious match would merge their splits.
    """
    if patients not in ("shared", "per_dataset"):
        raise DatasetError(f"patients must be 'shared' or 'per_dataset', got {patients!r}")
    if isinstance(paths, str | Path):
        paths = [p for p in str(paths).split(",") if p.strip()]
    if len(paths) == 1:
        return read_table(paths[0], fmt, label_scheme=label_scheme, task=task)
    tables = [read_table(p, fmt, label_scheme=label_scheme, task=task) for p in paths]
    first = tables[0]
    for t in tables[1:]:
        if t.class_names != first.class_names or t.task != first.task:
            raise DatasetError(f"{t.root}: classes {t.class_names} differ from {first.root}'s {first.class_names}")
        if (t.images is None) != (first.images is None):
            raise DatasetError("cannot combine an .npz dataset with image folders")
    sources = list(dict.fromkeys(t.source for t in tables))
    return ImageTable(
        paths=[p for t in tables for p in t.paths],
        labels=np.concatenate([t.labels for t in tables]),
        groups=np.concatenate(
            [
                np.char.add(f"{Path(t.root).name}:", t.groups.astype(str)) if patients == "per_dataset" else t.groups
                for t in tables
            ]
        ).astype(str),
        class_names=first.class_names,
        task=first.task,
        split=None,
        images=None if first.images is None else np.concatenate([t.images for t in tables]),
        sizes=np.concatenate([t.sizes for t in tables]),
        source="+".join(sources),
        root=os.path.commonpath([t.root for t in tables]),
        label_scheme=first.label_scheme,
        parts=np.concatenate([np.full(len(t), i, dtype=np.int64) for i, t in enumerate(tables)]),
    )


def _image_sizes(paths: list[str]) -> np.ndarray:
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:  # header only: cheap
                sizes[i] = im.size
        except (OSError, SyntaxError) as e:
            raise DatasetError(f"{p}: unreadable image ({e})") from e
    return sizes


def _read_medmnist(path: Path, label_scheme: str) -> ImageTable:
    if path.is_dir():
        path = sorted(path.glob("*.npz"))[0]
    try:
        npz = np.load(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable .npz ({e})") from e
    images, labels, splits = [], [], []
    for s in SPLITS:
        ki, kl = f"{s}_images", f"{s}_labels"
        if ki not in npz or kl not in npz:
            raise DatasetError(f"{path}: missing keys {ki!r}/{kl!r} (MedMNIST layout expected)")
        x, y = npz[ki], np.asarray(npz[kl]).reshape(-1)
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) != len(y):
            raise DatasetError(f"{path}: {ki} must be uint8 (N,H,W[,C]) matching {kl}; got {x.dtype} {x.shape}")
        images.append(x)
        labels.append(y.astype(np.int64))
        splits += [s] * len(y)
    y = np.concatenate(labels)
    if y.min() < 0 or y.max() >= len(OCT_CLASSES):
        raise DatasetError(f"{path}: labels must be 0..3 (CNV, DME, DRUSEN, NORMAL); got {y.min()}..{y.max()}")
    x = np.concatenate(images)
    n = len(y)
    return ImageTable(
        paths=[""] * n,
        labels=y,
        # MedMNIST ships no patient ids; its own splits are used as given.
        groups=np.array([f"{s}-{i}" for i, s in enumerate(splits)]),
        class_names=OCT_CLASSES,
        task="oct",
        split=np.array(splits),
        images=x,
        sizes=np.tile([x.shape[2], x.shape[1]], (n, 1)),
        source="medmnist",
        root=str(path.parent),
    )


def _oct_table(
    paths: list[str], labels: list[int], groups: list[str], split: np.ndarray | None, source: str, root: Path | str
) -> ImageTable:
    """An OCT :class:`ImageTable` (no pixels loaded yet) from parallel path / label / patient lists."""
    return ImageTable(
        paths=paths,
        labels=np.array(labels, dtype=np.int64),
        groups=np.array(groups, dtype=str),
        class_names=OCT_CLASSES,
        task="oct",
        split=split,
        images=None,
        sizes=_image_sizes(paths),
        source=source,
        root=str(root),
    )


def _read_oct2017(path: Path, label_scheme: str) -> ImageTable:
    paths, labels, groups, splits = [], [], [], []
    present = [s for s in SPLITS if (path / s).is_dir()]
    if "train" not in present and "test" not in present:
        raise DatasetError(f"{path}: expected train/ and/or test/ folders (OCT2017 layout)")
    for s in present:
        for cls_dir in sorted(p for p in (path / s).iterdir() if p.is_dir()):
            if cls_dir.name.upper() not in OCT_CLASSES:
                raise DatasetError(f"{cls_dir}: unknown class folder; expected one of {', '.join(OCT_CLASSES)}")
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() not in _IMAGE_EXT:
                    continue
                m = _OCT_NAME.match(f.name)
                if not m:
                    raise DatasetError(f"{f}: file name must be CLASS-PATIENT-N.jpeg to split by patient")
                if m["cls"].upper() != cls_dir.name.upper():
                    raise DatasetError(f"{f}: file name class {m['cls']} disagrees with folder {cls_dir.name}")
                paths.append(str(f))
                labels.append(OCT_CLASSES.index(cls_dir.name.upper()))
                groups.append(m["pid"])
                splits.append(s)
    return _oct_table(paths, labels, groups, np.array(splits), "oct2017", path)


def _rows(csv_path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: file not found")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{csv_path}, line 1: missing columns {missing}; header is {reader.fieldnames}")
        return [(i + 2, row) for i, row in enumerate(reader)]


def _grade(csv_path: Path, line: int, value: str, label_scheme: str) -> int | None:
    try:
        g = int(value)
        return map_grade(g, label_scheme)
    except ValueError as e:
        raise DatasetError(f"{csv_path}, line {line}: DR grade must be an integer 0-4, got {value!r}") from e


def _fundus_table(
    csv_path: Path, root: Path, rows: list[tuple[str, int, str]], label_scheme: str, source: str
) -> ImageTable:
    if label_scheme not in SCHEME_CLASSES:
        raise DatasetError(f"unknown fundus label scheme {label_scheme!r}; known: {sorted(SCHEME_CLASSES)}")
    paths = [p for p, _, _ in rows]
    return ImageTable(
        paths=paths,
        labels=np.array([y for _, y, _ in rows], dtype=np.int64),
        groups=np.array([g for _, _, g in rows], dtype=str),
        class_names=SCHEME_CLASSES[label_scheme],
        task="fundus",
        split=None,
        images=None,
        sizes=_image_sizes(paths),
        source=source,
        root=str(root),
        label_scheme=label_scheme,
    )


def _find_image(csv_path: Path, line: int, folders: list[Path], stem: str, exts: tuple[str, ...]) -> str:
    for d in folders:
        for e in exts:
            p = d / f"{stem}{e}"
            if p.is_file():
                return str(p)
    raise DatasetError(
        f"{csv_path}, line {line}: image {stem}{exts[0]} not found in {', '.join(str(d) for d in folders)}"
    )


def _read_eyepacs(path: Path, label_scheme: str) -> ImageTable:
    root = path if path.is_dir() else path.parent
    csv_path = root / "trainLabels.csv" if path.is_dir() else path
    folders = [d for d in (root / "train", root) if d.is_dir()]
    rows = []
    for line, r in _rows(csv_path, ("image", "level")):
        y = _grade(csv_path, line, r["level"], label_scheme)
        if y is None:  # binary-strict drops grades 1-2 by design
            continue
        img = r["image"].strip()
        # EyePACS names are <patient>_<left|right>; other sets in this layout (IDRiD_001) have
        # no patient id, so each photo is its own group.
        stem, _, eye = img.rpartition("_")
        group = stem if stem and eye.lower() in ("left", "right") else img
        rows.append((_find_image(csv_path, line, folders, img, (".jpeg", ".jpg", ".png")), y, group))
    return _fundus_table(csv_path, root, rows, label_scheme, "eyepacs")


def _read_aptos(path: Path, label_scheme: str) -> ImageTable:
    root = path if path.is_dir() else path.parent
    csv_path = root / "train.csv" if path.is_dir() else path
    folders = [d for d in (root / "train_images", root / "train", root) if d.is_dir()]
    rows = []
    for line, r in _rows(csv_path, ("id_code", "diagnosis")):
        y = _grade(csv_path, line, r["diagnosis"], label_scheme)
        if y is None:
            continue
        img = r["id_code"].strip()
        rows.append((_find_image(csv_path, line, folders, img, (".png", ".jpeg", ".jpg")), y, img))
    return _fundus_table(csv_path, root, rows, label_scheme, "aptos")


def _read_labels_csv(path: Path, label_scheme: str) -> ImageTable:
    csv_path = path / "labels.csv" if path.is_dir() else path
    root = csv_path.parent
    rows = _rows(csv_path, ("path", "label"))
    raw_labels = {r["label"].strip() for _, r in rows}
    is_oct = raw_labels <= set(OCT_CLASSES)
    paths, labels, groups = [], [], []
    for line, r in rows:
        p = root / r["path"].strip()
        if not p.is_file():
            raise DatasetError(f"{csv_path}, line {line}: image {p} not found")
        lab = r["label"].strip()
        if is_oct:
            y: int | None = OCT_CLASSES.index(lab)
        elif lab.isdigit():
            y = _grade(csv_path, line, lab, label_scheme)
            if y is None:
                continue
        else:
            raise DatasetError(
                f"{csv_path}, line {line}: unknown label {lab!r}; expected one of {', '.join(OCT_CLASSES)} "
                "or a DR grade 0-4"
            )
        paths.append(str(p))
        labels.append(y)
        pid = (r.get("patient_id") or "").strip()
        groups.append(pid or r["path"].strip())
    if is_oct:
        return _oct_table(paths, labels, groups, None, "csv", root)
    return _fundus_table(csv_path, root, list(zip(paths, labels, groups, strict=True)), label_scheme, "csv")
