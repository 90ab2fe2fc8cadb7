"""The gate's images as prepared views: every real retinal image (and poor-capture copies of it) and negatives.

* **oct**: every scan of ``oct-dev`` + ``oct-train`` (818 Kermany B-scans, grouped by patient);
* **fundus**: ``fundus-train`` (EyePACS, raw and publisher-normalised), ``fundus-idrid`` (Kowa,
  India) and ``fundus-odir`` (several cameras, China; glaucoma, AMD, myopia, cataract, laser
  scars ...); ``fundus-dev`` is never fitted: it measures false rejections. Each real image
  also gives :func:`training.gate.augment.capture_variants` copies (dark, small pupil, cut field,
  lesion-heavy ...), positives in the same group;
* **other**: ``negatives/imagenet-sample`` (grouped by ImageNet class) with the
  :func:`~training.gate.augment.hard_variants` of each, library samples and generated images.

Views are cached under a key of the code that makes them and the input files.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from retina.gate import GATE_CLASSES, MIN_SIDE, _is_grey, gate_view, screen
from retina.preprocessing import load_image
from retina.quality import fundus_field, fundus_quality, gate_thumb, quality
from retina.serialize import atomic_write
from training.gate import augment, negatives

logger = logging.getLogger("training.gate")

# The fundus-field evidence (retina.quality.fundus_field), then two flags of the served gate on the
# same copy: ``grey`` (its grey rule) and ``screened`` (refused before the CNN: tiny, blank, noise).
FIELD_KEYS: tuple[str, ...] = ("round", "box_share", "surround", "redness", "structure", "chroma", "grey", "screened")
RETINAL_SETS: tuple[str, ...] = ("oct-dev", "oct-train", "fundus-train", "fundus-idrid", "fundus-odir", "fundus-dev")
N_GENERATED = 60


@dataclass
class Views:
    """Prepared gate inputs and what each one is.

    Attributes:
        x: ``uint8 (N, 3, S, S)`` gate views.
        y: ``(N,)`` index into :data:`GATE_CLASSES`.
        group: ``(N,)`` str: patient, ImageNet class or generated-image id (variants share it).
        kind: ``(N,)`` str: ``real`` for an image as it came, else the variant's name.
        source: ``(N,)`` str: the set it came from (``oct-train``, ``imagenet``, ``generated`` ...).
        name: ``(N,)`` str: file or sample name.
        field: ``float (N, K)``: :func:`retina.quality.fundus_field` evidence and the served gate's flags
            (:data:`FIELD_KEYS` order).
        quality: per view, the real retinal images' quality measures, ``look`` and ``grade_features``.
    """

    x: torch.Tensor
    y: np.ndarray
    group: np.ndarray
    kind: np.ndarray
    source: np.ndarray
    name: np.ndarray
    field: np.ndarray
    quality: list[dict[str, Any]] = field(default_factory=list)


def retinal_files(root: Path) -> list[tuple[str, str, str, Path]]:
    """``(set, modality, group, path)`` of every real retinal image under ``root``."""
    out: list[tuple[str, str, str, Path]] = []
    for s in ("oct-dev", "oct-train"):
        # OCT2017 names are CLASS-PATIENT-N.jpeg: the patient id alone groups both folders.
        out += [(s, "oct", p.stem.split("-")[1], p) for p in sorted((root / s).glob("train/*/*.jpeg"))]
    for s in ("fundus-train", "fundus-idrid", "fundus-odir", "fundus-dev"):
        for p in sorted((root / s).glob("train/*.jpeg")):
            stem, _, eye = p.stem.rpartition("_")
            out.append((s, "fundus", f"{s}:{stem if eye in ('left', 'right') else p.stem}", p))
    return out


def _evidence(img: Image.Image) -> list[float]:
    """:data:`FIELD_KEYS` of one image, as the served gate sees its small copy."""
    thumb = gate_thumb(img) if min(img.size) >= MIN_SIDE else img
    e = fundus_field(thumb) | {"grey": float(_is_grey(thumb)), "screened": float(screen(img, thumb) is not None)}
    return [float(e[k]) for k in FIELD_KEYS]


def _retinal_job(job: tuple[str, str, str, str, int]) -> list[tuple[str, np.ndarray, list[float], dict | None]]:
    """Decode one retinal image: its view, field evidence, quality (+ ``n`` capture variants)."""
    set_name, modality, _, path, n_variants = job
    img = load_image(path)
    if modality == "fundus":
        q, feats = fundus_quality(img)
        q = q | {"grade_features": feats.tolist()}
    else:
        q = quality(img, modality)
    # fundus-train mixes two looks: 256-px publisher-normalised crops and raw camera photos.
    q["look"] = set_name + (":normalised" if img.size == (256, 256) else "")
    out = [("real", gate_view(img).numpy(), _evidence(img), q)]
    if n_variants:
        rng = np.random.default_rng(zlib.crc32(path.encode()))
        for k, v in augment.capture_variants(img, modality, rng, n_variants).items():
            out.append((k, gate_view(v).numpy(), _evidence(v), None))
    return out


def _n_variants(s: str, i: int) -> int:
    """Capture copies per image: 3 for OCT, IDRiD and ODIR, 2 for every 2nd EyePACS image, none for fundus-dev."""
    if s == "fundus-dev":
        return 0
    if s == "fundus-train":
        return 2 if i % 2 == 0 else 0
    return 3


def build_views(root: Path, seed: int = 0, workers: int = 2, limit: int | None = None) -> Views:
    """Every training/evaluation image as gate views (variants included); ``limit`` caps each set (smoke runs)."""
    xs: list[np.ndarray] = []
    meta: dict[str, list[Any]] = defaultdict(list)

    def add(x: np.ndarray, y: str, group: str, kind: str, source: str, name: str, ev: list[float], q: dict | None):
        xs.append(x)
        for k, val in zip(
            ("y", "group", "kind", "source", "name", "field", "quality"),
            (GATE_CLASSES.index(y), group, kind, source, name, ev, q or {}),
            strict=True,
        ):
            meta[k].append(val)

    files = retinal_files(root)
    if limit:
        files = [f for s in dict.fromkeys(f[0] for f in files) for f in [g for g in files if g[0] == s][:limit]]
    if not any(s == "oct-train" for s, *_ in files) or not any(s == "fundus-train" for s, *_ in files):
        raise SystemExit(f"no oct-train / fundus-train images under {root}")
    jobs = [(s, m, g, str(p), _n_variants(s, i)) for i, (s, m, g, p) in enumerate(files)]
    with ProcessPoolExecutor(workers) as ex:
        results = ex.map(_retinal_job, jobs, chunksize=32)
        for (s, m, g, p), res in tqdm(zip(files, results, strict=True), total=len(files), desc="retinal", unit="img"):
            for kind, x, ev, q in res:
                add(x, m, g, kind, s, p.name, ev, q)
    rng = np.random.default_rng(seed)
    photos: list[tuple[str, str, str, Image.Image]] = []
    neg_dir = root / "negatives" / "imagenet-sample"
    for p in (sorted(neg_dir.glob("*.jpg")) + sorted(neg_dir.glob("*.JPEG")) + sorted(neg_dir.glob("*.png")))[:limit]:
        photos.append(("imagenet", p.stem.split("_")[0], p.name, load_image(str(p))))
    photos += [("samples", name, name, im) for name, im in negatives.sample_photos()]
    for source, group, name, im in tqdm(photos, desc="photos", unit="img"):
        add(gate_view(im).numpy(), "other", group, "real", source, name, _evidence(im), None)
        for kind, v in augment.hard_variants(im, rng).items():
            add(gate_view(v).numpy(), "other", group, kind, source, name, _evidence(v), None)
    for kind, name, im in negatives.generated_negatives(N_GENERATED if not limit else 4, seed):
        add(gate_view(im).numpy(), "other", f"gen:{name}", "real", f"generated:{kind}", name, _evidence(im), None)
    logger.info(
        "views: %s", Counter((GATE_CLASSES[y], k == "real") for y, k in zip(meta["y"], meta["kind"], strict=True))
    )
    return Views(
        x=torch.from_numpy(np.stack(xs)),
        y=np.asarray(meta["y"], dtype=np.int64),
        group=np.asarray(meta["group"], dtype=str),
        kind=np.asarray(meta["kind"], dtype=str),
        source=np.asarray(meta["source"], dtype=str),
        name=np.asarray(meta["name"], dtype=str),
        field=np.asarray(meta["field"], dtype=np.float64),
        quality=meta["quality"],
    )


def _views_key(root: Path, seed: int, limit: int | None) -> str:
    """Cache key of :func:`build_views`: the code that makes views, the input files, the arguments."""
    import retina.gate as core
    import retina.quality as qmod

    h = hashlib.sha256()
    for mod in (core, qmod, augment, negatives):
        h.update(inspect.getsource(mod).encode())
    for fn in (retinal_files, _retinal_job, _n_variants, build_views, _evidence):
        h.update(inspect.getsource(fn).encode())
    for _, _, _, path in retinal_files(root):
        h.update(f"{path.relative_to(root)}:{path.stat().st_size}".encode())
    neg = root / "negatives" / "imagenet-sample"
    h.update(str(sorted((p.name, p.stat().st_size) for p in neg.glob("*") if p.is_file())).encode())
    h.update(f"{N_GENERATED}:{seed}:{limit}".encode())
    return h.hexdigest()[:16]


def cached_views(root: Path, cache_dir: Path | None, *, seed: int = 0, limit: int | None = None) -> Views:
    """:func:`build_views`, kept in ``cache_dir`` (an ``.npz`` and JSON: no pickle) under a key of code and inputs."""
    if cache_dir is None:
        return build_views(root, seed=seed, limit=limit)
    path = cache_dir / f"gate-views-{_views_key(root, seed, limit)}.npz"
    cols = ("y", "group", "kind", "source", "name", "field")
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        logger.info("gate views from cache %s", path)
        return Views(torch.from_numpy(z["x"]), *(z[c] for c in cols), quality=json.loads(str(z["quality"])))
    v = build_views(root, seed=seed, limit=limit)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, suffix=".tmp.npz") as tmp:  # np.savez appends .npz to any other name
        np.savez(tmp, x=v.x.numpy(), **{c: getattr(v, c) for c in cols}, quality=np.asarray(json.dumps(v.quality)))
    return v


def labels(root: Path) -> dict[tuple[str, str], dict[str, str]]:
    """``(set, file name) -> {"level", "keywords", "quality_keywords", "eyeq"}`` where known.

    ``level`` is the DR grade, ``keywords`` / ``quality_keywords`` ODIR's findings and its graders'
    quality remarks, ``eyeq`` the EyeQ quality grade.
    """
    import csv

    out: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for s in ("fundus-train", "fundus-idrid", "fundus-odir", "fundus-dev"):
        f = root / s / "trainLabels.csv"
        if f.is_file():
            for row in csv.DictReader(f.open()):
                out[(s, row["image"] + ".jpeg")]["level"] = row["level"]
    f = root / "fundus-odir" / "labels.csv"
    if f.is_file():
        for row in csv.DictReader(f.open()):
            out[("fundus-odir", row["image"] + ".jpeg")]["keywords"] = row["keywords"]
            out[("fundus-odir", row["image"] + ".jpeg")]["quality_keywords"] = row.get("quality_keywords") or ""
    f = root / "eyeq-quality.csv"
    if f.is_file():
        for row in csv.DictReader(f.open()):
            out[(row["dataset"], row["image"] + ".jpeg")]["eyeq"] = row["quality"]
    return dict(out)
