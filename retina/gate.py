"""Image gate: is an upload an OCT B-scan, a colour fundus photo, or neither, and is it gradable?

Runs before every prediction, because a classifier labels anything: a portrait would
otherwise come back "referable DR". Two steps:

1. **Modality** from a small CNN (``gatenet`` in :mod:`retina.models`, a self-describing
   checkpoint ``models/image-gate.pt`` with its own :class:`PreprocessSpec`: the whole image
   letterboxed to 64 px, colour kept) that scores ``oct`` / ``fundus`` / ``other``. An image is
   a modality when that modality's probability reaches the checkpoint's acceptance threshold
   (chosen on grouped cross-validation for <= 1 % false acceptance of photographs of unseen
   classes, with no real retinal image refused); anything else is ``other``. It replaced 14
   hand-made statistics with a Mahalanobis model, which let one ImageNet photograph in five
   through as a fundus photo: colour, a dark surround and an elliptical bright region are not
   what makes a retina (``training/gate.py`` measures both).
2. **Gradability** of the detected modality from quality measures (retina brightness,
   over-exposure, sharpness, retina in frame; OCT layer-band contrast, blankness), with
   limits fitted on the real images (their 0.5 % quantile with slack) and stored in the same
   checkpoint. Plain numbers, so ``/predict`` shows why an image was called ungradable.

``python -m training.gate`` trains the CNN, fits the limits and writes the report.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from retina import checkpoint
from retina.engine import load_engine
from retina.preprocessing import PreprocessSpec, numpy_lerp, pil_to_uint8_tensor, prepare, tail_fn

Modality = Literal["oct", "fundus", "other"]
MODALITIES: tuple[str, ...] = ("oct", "fundus")
GATE_CLASSES: tuple[str, ...] = ("oct", "fundus", "other")
GATE_TASK = "gate"

GATE_FILE = "image-gate.pt"
THUMB = 128  # long side of the one small copy (gate_thumb) the CNN view and quality measures come from

# The CNN's input: the whole upload letterboxed on black (OCT scans are wide, photos of any
# shape), colour kept. 64 px is enough to tell a retina from a photograph and costs ~1 ms.
GATE_SPEC = PreprocessSpec(size=64, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), square="pad")
MIN_SIDE = 32  # px: smaller uploads (icons, thumbnails) cannot be graded
# Grey levels: an upload whose small copy spans no more than this in every band is one flat tone
# (a blank frame, a failed export). No retinal image is: both kinds have a black surround or
# vitreous next to bright tissue. Checked before the CNN, which called some flat grey fields an
# ungradable fundus (so an OCT upload got "wrong modality" instead of "not a retinal image").
FLAT_RANGE = 8

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
        probabilities: the CNN's softmax over ``oct``, ``fundus``, ``other``.
        gradable: False when the image is the modality but unusable; always False for ``other``.
        reasons: why it is ungradable (or not retinal), in words; empty when gradable.
        quality: the quality measures of the detected modality.
        thresholds: the acceptance threshold of each modality (probability).
    """

    modality: Modality
    probabilities: dict[str, float]
    gradable: bool
    reasons: list[str] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "gradable": self.gradable,
            "reasons": list(self.reasons),
            "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
            "thresholds": {k: round(v, 4) for k, v in self.thresholds.items()},
            "quality": {k: round(v, 4) for k, v in self.quality.items()},
        }


def gate_thumb(img: Image.Image, size: int = THUMB) -> Image.Image:
    """The one small copy of an upload the gate works on: long side ``size`` (aspect kept), L or RGB.

    An integer box reduction first (it reads each source pixel once, so a 4-megapixel photo
    costs a fraction of a millisecond), then one box resize to ``size``; an upload that is
    already small is returned as it is. The CNN's view and every quality measure are taken
    from this copy, in training and in serving alike, so the gate's cost no longer grows
    with the upload's size (it was ~10 ms per image when each step resized the full image).
    """
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    w, h = img.size
    if max(w, h) <= size:
        return img
    k = max(w, h) // size
    small = img.reduce(k) if k > 1 else img
    w, h = small.size
    s = size / max(w, h)
    return small.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX)


def _tone_range(img: Image.Image) -> int:
    """Largest ``max - min`` over the bands of an ``L`` or ``RGB`` image, in grey levels."""
    ext = img.getextrema()
    bands = ext if isinstance(ext[0], tuple) else (ext,)
    return max(int(hi) - int(lo) for lo, hi in bands)  # type: ignore[misc]


def gate_view(img: Image.Image, spec: PreprocessSpec = GATE_SPEC) -> torch.Tensor:
    """The CNN's prepared input for one decoded image: ``uint8 (3, S, S)``, from :func:`gate_thumb`."""
    return pil_to_uint8_tensor(prepare(gate_thumb(img), spec))


def thumbnail_u8(img: Image.Image, size: int = THUMB) -> np.ndarray:
    """Any PIL image -> ``uint8 (H, W, 3)``, long side at most ``size`` (aspect kept), from :func:`gate_thumb`.

    Grey images get three equal channels, so "grey" is measurable as zero chroma.
    """
    small = gate_thumb(img, size)
    return np.asarray(small if small.mode == "RGB" else small.convert("RGB"))


def _ellipse_iou(mask: np.ndarray) -> tuple[float, float]:
    """IoU of ``mask`` with the ellipse inscribed in its bounding box, and the box's share of the frame.

    The box is taken from rows/columns with at least 5 % bright pixels, so stray specks do
    not stretch it. A fundus photo cut at top and bottom by the sensor still scores high: the
    ellipse is clipped by the same frame.
    """
    h, w = mask.shape
    # count / n is the float64 mean of the bools exactly (an integer divided once), without the float copy.
    rows = np.flatnonzero(np.count_nonzero(mask, axis=1) / w > 0.05)
    cols = np.flatnonzero(np.count_nonzero(mask, axis=0) / h > 0.05)
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
    inter = np.count_nonzero(mask & ellipse)
    union = np.count_nonzero(mask | ellipse)
    box_share = float((bottom - top) * (right - left)) / float(h * w)
    return float(inter / max(union, 1)), box_share


def _dark_level(vmax_u8: np.ndarray) -> float:
    """Grey level under which a pixel is surround, from the per-pixel channel max ``vmax_u8 uint8 (H, W)``.

    It follows the exposure: in a dark (but real) fundus photo the retina itself is only
    ~0.1-0.2 grey, while the camera's black rim stays under ~0.03.
    """
    return float(np.clip(0.2 * _percentile_u8_as_unit(vmax_u8, 99.0), 0.03, _DARK))


def _percentile_u8_as_unit(v: np.ndarray, q: float) -> float:
    """``percentile(v.astype(float32) / 255, q)`` for ``uint8`` ``v``: the same float32 value, from a histogram.

    The two order statistics come from the cumulative 256-bin histogram (``float32(u) / 255`` is
    monotone in ``u``, so the k-th smallest scaled value is the scaled k-th smallest byte), then
    numpy's two-branch interpolation as in ``retina.preprocessing.percentile``: ~5x cheaper than
    partitioning the scaled image.
    """
    flat = v.ravel()
    pos = (flat.size - 1) * (q / 100.0)
    lo = int(np.floor(pos))
    hi = min(lo + 1, flat.size - 1)
    cum = np.cumsum(np.bincount(flat, minlength=256))
    x, y = (np.float32(np.searchsorted(cum, k, side="right")) / np.float32(255.0) for k in (lo, hi))
    return float(numpy_lerp(x, y, pos - lo))


_KERNEL5 = np.ones((5, 5), np.uint8)


def _sharpness(a: np.ndarray, bright: np.ndarray, g_mean: float) -> float:
    """Mean |Laplacian| of the green of ``a (H, W, 3)`` in the eroded retina ``bright (H, W)``, over its level

        Taken at :data:`THUMB` px: the box averaging removes JPEG block noise, which at 256 px
        kept heavily blurred photos looking "sharp". The erosion (5x5, so the disc rim's edge is
        not counted as detail) is OpenCV's erosion, the same square minimum filter as scipy's
    ``minimum_filter(mode="nearest")`` at a fifth of its cost (PIL's rank filter cost 4 ms).
    """
    g = a[..., 1]
    core = cv2.erode(bright.astype(np.uint8), _KERNEL5, borderType=cv2.BORDER_REPLICATE) > 0
    lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
    inner = core[1:-1, 1:-1]
    return float(lap[inner].mean() / (g_mean + 0.05)) if inner.any() else 0.0


def quality(img: Image.Image, modality: str) -> dict[str, float]:
    """The quality measures of ``modality`` (see :data:`QUALITY_MEASURES`) for one image (at :data:`THUMB` px)."""
    u8 = thumbnail_u8(img)
    a = u8.astype(np.float32) / 255.0  # float32 (H, W, 3) in [0, 1]
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    vmax_u8 = np.maximum(np.maximum(u8[..., 0], u8[..., 1]), u8[..., 2])
    vmax = vmax_u8.astype(np.float32) / 255.0  # the channel max of ``a`` exactly: scaling is monotone
    grey = (r + g + b) / 3.0
    bright = vmax > _dark_level(vmax_u8)
    n_bright = max(np.count_nonzero(bright), 1)
    if modality == "oct":
        std = float(grey.std())
        rows = grey.mean(axis=1)
        k = max(3, len(rows) // 32)
        smooth = np.convolve(rows, np.ones(k) / k, mode="valid")
        return {
            "band_contrast": float((smooth.max() - np.median(rows)) / (std + 1e-6)),
            "signal_std": std,
            "overexposed_frac": float(np.count_nonzero((vmax > 0.98) & bright) / n_bright),
        }
    g_mean = float(g[bright].mean()) if bright.any() else 0.0
    # Sharpness: high-frequency energy of the green channel (vessels live there) inside the
    # retina relative to its brightness.
    return {
        "retina_brightness": float(grey[bright].mean()) if bright.any() else 0.0,
        "overexposed_frac": float(np.count_nonzero((vmax > 0.98) & bright) / n_bright),
        "sharpness": _sharpness(a, bright, g_mean),
        # A whole disc in frame fits its ellipse (IoU ~0.9+); a crop inside the disc fills
        # the frame and scores pi/4 at best.
        "retina_in_frame": _ellipse_iou(bright)[0],
    }


def quality_reasons(q: dict[str, float], limits: dict[str, float]) -> list[str]:
    """Why an image with quality measures ``q`` is ungradable under ``limits`` (empty: gradable)."""
    reasons = []
    for name, limit in limits.items():
        value = q[name]
        bad = value < limit if QUALITY_DIRECTION[name] == "min" else value > limit
        if bad:
            reasons.append(f"{QUALITY_REASONS[name]} ({name} {value:.3g}, limit {limit:.3g})")
    return reasons


def _fused(model: nn.Module) -> nn.Module:
    """An inference copy of ``gatenet`` with each Conv-BN-ReLU fused into one op (same outputs).

    The network is so small that per-op overhead is most of its cost; fusing the batch norms
    into the convolutions (torch.ao's ``fuse_modules``, eval mode) cuts a third of the ops.
    The unfused model stays in :attr:`ImageGate.model`: it is what is saved and trained.
    """
    feats = getattr(model, "features", None)
    if not isinstance(feats, nn.Sequential):
        return model
    groups = [
        [str(i), str(i + 1), str(i + 2)]
        for i in range(len(feats) - 2)
        if isinstance(feats[i], nn.Conv2d)
        and isinstance(feats[i + 1], nn.BatchNorm2d)
        and isinstance(feats[i + 2], nn.ReLU)
    ]
    fast = copy.deepcopy(model).eval()
    fast.features = torch.ao.quantization.fuse_modules(fast.features, groups)
    return fast


class ImageGate:
    """The fitted gate: modality CNN, acceptance thresholds and quality limits.

    Args:
        model: ``gatenet`` in eval mode; ``(N, 3, S, S)`` normalised input -> ``(N, 3)`` logits.
        spec: its preprocessing (:data:`GATE_SPEC` for the shipped one).
        thresholds: modality -> smallest accepted probability.
        quality_limits: modality -> measure -> limit (direction in :data:`QUALITY_DIRECTION`).
        fitted_on: provenance and measured figures, for ``/models`` and the report.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: PreprocessSpec,
        thresholds: dict[str, float],
        quality_limits: dict[str, dict[str, float]],
        fitted_on: dict[str, Any] | None = None,
        version: str = "0.0.0",
    ) -> None:
        self.model = model.eval()
        self.spec = spec
        self.thresholds = {m: float(thresholds[m]) for m in MODALITIES}
        self.quality_limits = quality_limits
        self.fitted_on = fitted_on or {}
        self.version = version
        self._tail = tail_fn(spec)  # tail(spec)'s kernels without the Compose's dispatch (~0.5 ms a call)
        self._fast = _fused(self.model)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self._fast
        self.engine = "torch"

    def use_engine(self, name: str, path: str | Path, cache_dir: str | Path | None = None) -> str:
        """Run the CNN on ``retina.engine``'s ``name`` (``auto``: ONNX Runtime fp32 when it passes parity).

        The network is a few hundred microseconds of arithmetic, so torch's per-op dispatch is
        most of its cost: ONNX Runtime runs the same fused graph in about a third of the time
        (measured in ``benchmarks/serve_benchmark.py``'s stage table). Int8 is not offered for the
        gate: its thresholds were chosen on fp32 probabilities. Returns the engine's name.
        """
        # Int8 requests run the gate on fp32 ONNX Runtime (its thresholds are fp32; OpenVINO fp32 is slower here).
        name = "onnxruntime" if name in ("auto", "onnxruntime-int8", "openvino-int8") else name
        meta = checkpoint.meta_from_dict(checkpoint.read(path))
        engine, info = load_engine(name, self._fast, meta, path, threads=1, cache_dir=cache_dir)
        self._forward, self.engine = engine, info.name
        return info.name

    # ------------------------------------------------------------------ scoring
    def probabilities(self, views: torch.Tensor) -> np.ndarray:
        """``uint8 (N, 3, S, S)`` gate views -> softmax ``float (N, 3)`` over :data:`GATE_CLASSES`."""
        with torch.inference_mode():
            logits = self._forward(self._tail(views))
        return torch.softmax(logits.float(), dim=1).numpy()

    def decide(self, probs: np.ndarray) -> str:
        """Modality for one probability row ``(3,)``: the likelier retinal kind if it reaches its threshold."""
        best = max(MODALITIES, key=lambda m: probs[GATE_CLASSES.index(m)])
        return best if probs[GATE_CLASSES.index(best)] >= self.thresholds[best] else "other"

    def assess_many(self, images: Sequence[Image.Image]) -> list[GateResult]:
        """Decide modality and gradability of several decoded images in one forward pass."""
        results: list[GateResult | None] = [None] * len(images)
        todo = []
        for i, img in enumerate(images):
            if min(img.size) < MIN_SIDE:
                reason = f"the image is {img.size[0]}x{img.size[1]} px, too small to be a retinal image"
                results[i] = GateResult("other", {}, False, [reason], {}, self.thresholds)
            else:
                todo.append(i)
        thumbs = {i: gate_thumb(images[i]) for i in todo}  # one small copy: view and quality
        for i in todo:
            if _tone_range(thumbs[i]) <= FLAT_RANGE:
                reason = "the image is blank (one flat tone), not an OCT B-scan or a fundus photo"
                results[i] = GateResult("other", {}, False, [reason], {}, self.thresholds)
        todo = [i for i in todo if results[i] is None]
        if todo:
            probs = self.probabilities(torch.stack([gate_view(thumbs[i], self.spec) for i in todo]))
            for i, p in zip(todo, probs, strict=True):
                pd = {c: float(v) for c, v in zip(GATE_CLASSES, p, strict=True)}
                modality = self.decide(p)
                if modality == "other":
                    why = "it does not look like an OCT B-scan or a fundus photo"
                    results[i] = GateResult("other", pd, False, [why], {}, self.thresholds)
                    continue
                q = quality(thumbs[i], modality)
                reasons = quality_reasons(q, self.quality_limits.get(modality, {}))
                results[i] = GateResult(modality, pd, not reasons, reasons, q, self.thresholds)  # type: ignore[arg-type]
        return [r for r in results if r is not None]

    def assess(self, img: Image.Image) -> GateResult:
        """Decide modality and gradability of one decoded image."""
        return self.assess_many([img])[0]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, model_args: dict[str, Any], metrics: dict[str, Any] | None = None) -> Path:
        return checkpoint.save(
            path,
            self.model,
            arch="gatenet",
            model_args=model_args,
            task=GATE_TASK,
            class_names=list(GATE_CLASSES),
            preprocess=self.spec,
            metrics=metrics or {},
            version=self.version,
            extra={"thresholds": self.thresholds, "quality_limits": self.quality_limits, "fitted_on": self.fitted_on},
        )

    @classmethod
    def load(cls, path: str | Path) -> ImageGate:
        """Read a gate checkpoint; ``ValueError`` when it is not one (wrong task, classes or limits)."""
        model, meta = checkpoint.load(path)
        if meta.task != GATE_TASK or tuple(meta.class_names) != GATE_CLASSES:
            raise ValueError(f"{path} is not an image-gate checkpoint (task {meta.task!r}, classes {meta.class_names})")
        extra = meta.extra
        thresholds = extra.get("thresholds") or {}
        if set(thresholds) != set(MODALITIES) or not all(0.0 < float(v) <= 1.0 for v in thresholds.values()):
            raise ValueError(f"{path} needs an acceptance threshold in (0, 1] for each of {list(MODALITIES)}")
        limits = extra.get("quality_limits") or {}
        for m, lim in limits.items():
            unknown = set(lim) - set(QUALITY_MEASURES.get(m, ()))
            if m not in MODALITIES or unknown:
                raise ValueError(f"{path}: unknown quality limits {sorted(unknown) or m!r}")
        return cls(model, meta.preprocess, thresholds, limits, extra.get("fitted_on") or {}, meta.version)
