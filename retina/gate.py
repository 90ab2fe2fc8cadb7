"""Image gate: is an upload an OCT B-scan, a colour fundus photo, or neither, and is it gradable?

Runs before every prediction, because a classifier labels anything: a cat photo would
otherwise come back "NORMAL, 97 %". Two steps, both on a small thumbnail (about 2-4 ms):

1. **Modality** from 14 hand-made image statistics (:func:`features`) that describe what
   makes the two kinds of retinal image what they are: a fundus photo is a bright,
   red-orange, elliptical disc on a dark surround; an OCT B-scan is a grey, speckled image
   whose layers run left to right (vertical gradients dominate). For each modality the gate
   stores the mean and a shrunk covariance of these statistics over the real training
   images (and mild variants of them); an image is that modality when its Mahalanobis
   distance is under the threshold fitted on those positives. Anything far from both is
   ``other``. The model is one-class on purpose: the non-retinal photos it is checked
   against were never used to fit it, so the false-acceptance count measured on them is
   an honest held-out figure, and no finite set of "negatives" could cover the world.
   scikit-learn fits the covariance (Ledoit-Wolf shrinkage); the few parameters are stored
   as JSON (``models/image-gate.json``), so serving needs neither pickle nor sklearn.
2. **Gradability** from quality measures of the detected modality (brightness of the
   retina, over-exposure, sharpness, how much of the retina is in frame, OCT band
   contrast), with limits fitted on the real images (their 0.5 % quantile minus a margin)
   and checked against blurred, darkened, over-exposed and cropped copies of them.

Why hand-made statistics and not a CNN: a CNN trained on 46 OCT scans and ~30 non-retinal
photos would learn whatever separates those few images; the statistics below encode what
an ophthalmologist would check first and each can be inspected in ``/predict``'s ``gate``.
``training/gate.py`` fits the gate and reports false rejections/acceptances.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFilter

Modality = Literal["oct", "fundus", "other"]
MODALITIES: tuple[str, ...] = ("oct", "fundus")

GATE_FILE = "image-gate.json"
GATE_FORMAT = "retinascope-gate"
THUMB = 256  # long side of the thumbnail every statistic is measured on

FEATURES: tuple[str, ...] = (
    "chroma",  # mean (max - min channel) of bright pixels: ~0 for grey OCT, high for fundus
    "dark_frac",  # share of near-black pixels (fundus surround, OCT vitreous/choroid)
    "ellipse_iou",  # IoU of the bright region with the ellipse inscribed in its bounding box
    "red_share",  # R / (R+G+B) inside the bright region
    "blue_share",  # B / (R+G+B) inside the bright region
    "grad_ratio",  # log(mean |d/dy| / mean |d/dx|): OCT layers run horizontally
    "band_contrast",  # peak of the row-mean profile above its median, in image std units
    "speckle",  # mean |img - 3x3 median| / std: OCT speckle
    "mean",  # mean grey level
    "std",  # grey-level std
    "sat_frac",  # share of clipped-white pixels
    "edge_density",  # share of pixels with a strong gradient
    "corner_dark",  # share of dark pixels in the four corner patches (a fundus camera's black rim)
    "coarse_aniso",  # grad_ratio at 1/8 scale: long horizontal layers survive, speckle and texture do not
)

# Physics, not statistics: a fundus photo is in colour and an OCT B-scan is grey. JPEG
# chroma noise on a grey image stays under ~0.01; the least colourful real fundus photo
# measured 0.024 (mean max-min channel of its bright pixels).
CHROMA_LIMITS: dict[str, tuple[float | None, float | None]] = {"fundus": (0.015, None), "oct": (None, 0.03)}
MIN_SIDE = 32  # px: smaller uploads (icons, thumbnails) cannot be graded

QUALITY_MEASURES: dict[str, tuple[str, ...]] = {
    "fundus": ("retina_brightness", "overexposed_frac", "sharpness", "retina_in_frame"),
    "oct": ("band_contrast", "signal_std", "overexposed_frac"),
}
# Direction of each quality measure: "min" = too low is ungradable, "max" = too high is.
QUALITY_DIRECTION: dict[str, str] = {
    "retina_brightness": "min",
    "overexposed_frac": "max",
    "sharpness": "min",
    "retina_in_frame": "min",
    "band_contrast": "min",
    "signal_std": "min",
}
QUALITY_REASONS: dict[str, str] = {
    "retina_brightness": "the retina is too dark",
    "overexposed_frac": "too much of the image is over-exposed (clipped white)",
    "sharpness": "the image is too blurred",
    "retina_in_frame": "too little of the retina is in the frame",
    "band_contrast": "no retinal layer band is visible",
    "signal_std": "the scan is blank or nearly uniform",
}

_DARK = 0.10  # grey level (0-1) under which a pixel is "surround", not retina


@dataclass(frozen=True)
class GateResult:
    """What the gate decided about one image.

    Attributes:
        modality: ``oct``, ``fundus`` or ``other`` (not a retinal image).
        distances: Mahalanobis distance to each modality, divided by its threshold
            (< 1 means "looks like this modality").
        gradable: False when the image is the modality but unusable; always False for ``other``.
        reasons: why it is ungradable (or not retinal), in words; empty when gradable.
        quality: the quality measures of the detected modality.
        features: the raw statistics (see :data:`FEATURES`).
    """

    modality: Modality
    distances: dict[str, float]
    gradable: bool
    reasons: list[str] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    features: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "gradable": self.gradable,
            "reasons": list(self.reasons),
            # inf (ruled out: a grey image for fundus, a colourful one for OCT) is not valid JSON.
            "distances": {k: (round(v, 4) if math.isfinite(v) else None) for k, v in self.distances.items()},
            "quality": {k: round(v, 4) for k, v in self.quality.items()},
        }


def thumbnail(img: Image.Image, size: int = THUMB) -> np.ndarray:
    """Any PIL image -> ``float32 (H, W, 3)`` in ``[0, 1]``, long side ``size`` (aspect kept).

    Grey images get three equal channels, so "grey" is measurable as zero chroma.
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    w, h = rgb.size
    scale = size / max(w, h)
    if scale < 1:
        rgb = rgb.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32) / 255.0


def _ellipse_iou(mask: np.ndarray) -> tuple[float, float]:
    """IoU of ``mask`` with the ellipse inscribed in its bounding box, and the box's share of the frame.

    The box is taken from rows/columns with at least 5 % bright pixels, so stray specks do
    not stretch it. A fundus photo cut at top and bottom by the sensor still scores high: the
    ellipse is clipped by the same frame.
    """
    h, w = mask.shape
    rows = np.flatnonzero(mask.mean(axis=1) > 0.05)
    cols = np.flatnonzero(mask.mean(axis=0) > 0.05)
    if rows.size < 4 or cols.size < 4:
        return 0.0, 0.0
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    cy, cx = (top + bottom) / 2, (left + right) / 2
    ry, rx = (bottom - top) / 2, (right - left) / 2
    # A disc cut by the frame has a bounding box as tall as the frame; its true vertical
    # radius is then the horizontal one (fundus discs are round), so widen it to match.
    # Only when the other axis shows the dark rim: a photo that is bright edge to edge is
    # a rectangle, not a clipped disc.
    if top == 0 and bottom == h and rx > ry and (left > 0 or right < w):
        ry = rx
    if left == 0 and right == w and ry > rx and (top > 0 or bottom < h):
        rx = ry
    yy, xx = np.ogrid[0:h, 0:w]  # broadcast: no (H, W) index grids
    ellipse = ((yy + 0.5 - cy) / max(ry, 1)) ** 2 + ((xx + 0.5 - cx) / max(rx, 1)) ** 2 <= 1.0
    inter = np.logical_and(mask, ellipse).sum()
    union = np.logical_or(mask, ellipse).sum()
    box_share = float((bottom - top) * (right - left)) / float(h * w)
    return float(inter / max(union, 1)), box_share


def _corner_dark(dark: np.ndarray) -> float:
    """Share of dark pixels in the four corner patches (each 12 % of height x width)."""
    h, w = dark.shape
    ch, cw = max(1, round(h * 0.12)), max(1, round(w * 0.12))
    corners = [dark[:ch, :cw], dark[:ch, -cw:], dark[-ch:, :cw], dark[-ch:, -cw:]]
    return float(np.mean([c.mean() for c in corners]))


def _coarse_aniso(grey_u8: Image.Image) -> float:
    """``log(mean |d/dy| / mean |d/dx|)`` of a 1/8-scale copy (box filter): retinal layers are long and horizontal."""
    w, h = grey_u8.size
    small = np.asarray(grey_u8.resize((max(4, w // 8), max(4, h // 8)), Image.Resampling.BOX), dtype=np.float32)
    dy = np.abs(np.diff(small, axis=0)).mean()
    dx = np.abs(np.diff(small, axis=1)).mean()
    return float(math.log((dy + 1e-3) / (dx + 1e-3)))


def _dark_level(vmax: np.ndarray) -> float:
    """Grey level under which a pixel is surround, from the per-pixel channel max ``vmax (H, W)``.

    It follows the exposure: in a dark (but real) fundus photo the retina itself is only
    ~0.1-0.2 grey, while the camera's black rim stays under ~0.03.
    """
    return float(np.clip(0.2 * np.percentile(vmax, 99), 0.03, _DARK))


def _sharpness(img: Image.Image, g_mean: float, side: int = 128) -> float:
    """Mean |Laplacian| of the green channel inside the (eroded) retina, over its mean level, at ``side`` px."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    w, h = rgb.size
    s = side / max(w, h)
    small = rgb.resize((max(8, round(w * s)), max(8, round(h * s))), Image.Resampling.BOX)
    a = np.asarray(small, dtype=np.float32) / 255.0
    g = a[..., 1]
    v = a.max(axis=2)
    bright = v > _dark_level(v)
    core = np.asarray(Image.fromarray(bright.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(5))) > 0
    lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
    inner = core[1:-1, 1:-1]
    return float(lap[inner].mean() / (g_mean + 0.05)) if inner.any() else 0.0


def measure(img: Image.Image) -> tuple[dict[str, float], dict[str, float]]:
    """``(features, quality)`` of one image; see :data:`FEATURES` and :data:`QUALITY_MEASURES`."""
    a = thumbnail(img)
    # Element-wise over the three planes: numpy reductions along a length-3 last axis are
    # several times slower than these (the gate runs on every request).
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    grey = (r + g + b) / 3.0
    vmax = np.maximum(np.maximum(r, g), b)
    chroma_px = vmax - np.minimum(np.minimum(r, g), b)
    bright = vmax > _dark_level(vmax)
    n_bright = max(int(bright.sum()), 1)
    std = float(grey.std())
    eps = 1e-6

    sums = np.array([c[bright].sum() for c in (r, g, b)]) if bright.any() else np.ones(3, dtype=np.float32)
    total = float(sums.sum()) + eps
    iou, _ = _ellipse_iou(bright)

    dy = np.abs(np.diff(grey, axis=0)).mean()
    dx = np.abs(np.diff(grey, axis=1)).mean()
    rows = grey.mean(axis=1)
    k = max(3, len(rows) // 32)
    smooth = np.convolve(rows, np.ones(k) / k, mode="valid")
    band = float((smooth.max() - np.median(rows)) / (std + eps))
    u8 = Image.fromarray((grey * 255).astype(np.uint8))
    med = np.asarray(u8.filter(ImageFilter.MedianFilter(3)), dtype=np.float32) / 255.0
    speckle = float(np.abs(grey - med).mean() / (std + eps))
    gy, gx = np.gradient(grey)
    gmag = np.hypot(gx, gy)

    features = {
        "chroma": float(chroma_px[bright].mean()) if bright.any() else 0.0,
        "dark_frac": float(1.0 - bright.mean()),
        "ellipse_iou": iou,
        "red_share": float(sums[0] / total),
        "blue_share": float(sums[2] / total),
        "grad_ratio": float(math.log((dy + eps) / (dx + eps))),
        "band_contrast": band,
        "speckle": speckle,
        "mean": float(grey.mean()),
        "std": std,
        "sat_frac": float((vmax > 0.98).mean()),
        "edge_density": float((gmag > 0.08).mean()),
        "corner_dark": _corner_dark(~bright),
        "coarse_aniso": _coarse_aniso(u8),
    }

    # Quality: sharpness is the high-frequency energy of the green channel (vessels live
    # there) inside the retina, relative to its brightness. Measured on a 128-px box-filtered
    # copy: the averaging removes JPEG block noise, which at 256 px kept heavily blurred
    # photos looking "sharp"; the retina mask is eroded so the rim edge does not count.
    g_mean = float(a[..., 1][bright].mean()) if bright.any() else 0.0
    sharpness = _sharpness(img, g_mean)
    quality = {
        "retina_brightness": float(grey[bright].mean()) if bright.any() else 0.0,
        "overexposed_frac": float((vmax[bright] > 0.98).sum() / n_bright),
        "sharpness": sharpness,
        # A whole disc in frame fits its ellipse (IoU ~0.9+); a crop inside the disc fills
        # the frame and scores pi/4 at best.
        "retina_in_frame": iou,
        "band_contrast": band,
        "signal_std": std,
    }
    return features, quality


@dataclass
class ImageGate:
    """Fitted gate parameters (see ``training/gate.py``); JSON-serialisable, no pickle.

    Attributes:
        means: component (``oct``, ``fundus:raw``, ...) -> feature means ``(F,)``.
        precisions: component -> inverse shrunk covariance ``(F, F)``.
        thresholds: component -> largest accepted Mahalanobis distance.
        quality_limits: modality -> measure -> limit (direction in :data:`QUALITY_DIRECTION`).
        fitted_on: provenance (data dirs, counts, date) for the model card / ``/models``.
    """

    means: dict[str, list[float]]
    precisions: dict[str, list[list[float]]]
    thresholds: dict[str, float]
    quality_limits: dict[str, dict[str, float]]
    fitted_on: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES

    def __post_init__(self) -> None:
        self._mu = {m: np.asarray(v, dtype=np.float64) for m, v in self.means.items()}
        self._prec = {m: np.asarray(v, dtype=np.float64) for m, v in self.precisions.items()}

    # ------------------------------------------------------------------ scoring
    def distances(self, feats: dict[str, float]) -> dict[str, float]:
        """Mahalanobis distance to each modality divided by its threshold (< 1 = accepted)."""
        x = np.asarray([feats[f] for f in self.features], dtype=np.float64)
        out = {}
        # Components are "modality" or "modality:kind" (e.g. fundus:raw and fundus:normalised,
        # two looks of one modality); a modality's distance is that of its nearest component.
        for comp, mu in self._mu.items():
            m = comp.split(":")[0]
            d = x - mu
            dist = float(math.sqrt(max(float(d @ self._prec[comp] @ d), 0.0)) / self.thresholds[comp])
            lo, hi = CHROMA_LIMITS.get(m, (None, None))
            if (lo is not None and feats["chroma"] < lo) or (hi is not None and feats["chroma"] > hi):
                dist = math.inf  # a grey image is no fundus photo, a colourful one no OCT scan
            out[m] = min(out.get(m, math.inf), dist)
        return out

    def assess(self, img: Image.Image) -> GateResult:
        """Decide modality and gradability of one decoded image."""
        if min(img.size) < MIN_SIDE:
            reason = f"the image is {img.size[0]}x{img.size[1]} px, too small to be a retinal image"
            return GateResult("other", dict.fromkeys(MODALITIES, math.inf), False, [reason], {}, {})
        feats, quality = measure(img)
        dist = self.distances(feats)
        best = min(dist, key=dist.__getitem__)
        if dist[best] > 1.0:
            return GateResult(
                "other", dist, False, ["it does not look like an OCT B-scan or a fundus photo"], {}, feats
            )
        q = {k: quality[k] for k in QUALITY_MEASURES[best]}
        reasons = []
        for name, limit in self.quality_limits.get(best, {}).items():
            value = q[name]
            bad = value < limit if QUALITY_DIRECTION[name] == "min" else value > limit
            if bad:
                reasons.append(f"{QUALITY_REASONS[name]} ({name} {value:.3g}, limit {limit:.3g})")
        return GateResult(best, dist, not reasons, reasons, q, feats)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": GATE_FORMAT,
            "format_version": 1,
            "features": list(self.features),
            "means": self.means,
            "precisions": self.precisions,
            "thresholds": self.thresholds,
            "quality_limits": self.quality_limits,
            "fitted_on": self.fitted_on,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImageGate:
        """Read a gate file; ``ValueError`` when it is not one or its features differ from this code's."""
        d = json.loads(Path(path).read_text())
        if not isinstance(d, dict) or d.get("format") != GATE_FORMAT:
            raise ValueError(f"{path} is not an image-gate file")
        if tuple(d["features"]) != FEATURES:
            raise ValueError(f"{path} was fitted on features {d['features']}, this code measures {list(FEATURES)}")
        for m in MODALITIES:
            if not any(c.split(":")[0] == m for c in d["means"]):
                raise ValueError(f"{path} has no parameters for {m!r}")
        # Shapes and names checked here, so a broken file is "not ready" at startup, not a 500 per request.
        n = len(FEATURES)
        for comp, mu in d["means"].items():
            prec = np.asarray(d["precisions"].get(comp), dtype=np.float64)
            if len(mu) != n or prec.shape != (n, n) or comp not in d["thresholds"]:
                raise ValueError(f"{path}: component {comp!r} needs {n} means, a {n}x{n} precision and a threshold")
        for m, limits in d.get("quality_limits", {}).items():
            unknown = set(limits) - set(QUALITY_DIRECTION)
            if unknown:
                raise ValueError(f"{path}: unknown quality measures {sorted(unknown)} for {m!r}")
        return cls(
            means=d["means"],
            precisions=d["precisions"],
            thresholds=d["thresholds"],
            quality_limits=d.get("quality_limits", {}),
            fitted_on=d.get("fitted_on", {}),
        )
