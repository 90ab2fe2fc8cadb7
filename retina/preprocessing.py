"""One preprocessing definition for training and serving.

A frozen :class:`PreprocessSpec` (saved in every checkpoint) fully determines how an
image becomes a model input. There is exactly one path from an image to a tensor:

    eval_transform(spec) = tail(spec) o prepare(spec)

* :func:`prepare` is deterministic and image-level (PIL in, PIL out): mode conversion,
  squaring (OCT centre crop as in OCTMNIST, fundus crop to the retina disc), resize to
  ``spec.size`` and, for fundus, local-average colour normalisation. Training caches
  its output once per image, because it is the expensive part.
* :func:`tail` turns a prepared ``uint8`` image into the normalised float tensor.
* :func:`train_transform` is random augmentation between those two, so the served
  transform is literally the training tail (tested in ``tests/unit``).

Mean and std are never retyped elsewhere: they come from the spec.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

# Decoding has its own module; these names stay importable from here for modules written against
# the old layout (training/fit_gate.py reads load_image from here).
from retina.decode import decode_image, load_image, to_standard_mode
from retina.errors import ImageDecodeError

__all__ = ["ImageDecodeError", "decode_image", "load_image"]

logger = logging.getLogger(__name__)

Square = Literal["center_crop", "pad", "fundus_disc", "stretch", "oct_band"]
Interpolation = Literal["bilinear", "bicubic", "nearest"]

_PIL_INTERP = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
_TV_INTERP = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that defines a model's input; stored verbatim in each checkpoint.

    Attributes:
        size: output side in pixels; tensors are ``(channels, size, size)``.
        channels: 1 (grayscale OCT) or 3 (colour fundus).
        mean, std: per-channel normalisation applied to values in ``[0, 1]``.
        square: how a non-square image becomes square before resizing:
            ``center_crop`` (short-side centre crop, the OCTMNIST recipe),
            ``pad`` (letterbox with black), ``fundus_disc`` (crop to the bright
            retina disc, then pad to square), ``stretch`` (plain resize),
            ``oct_band`` (find the retina band of a B-scan, flatten it along a smooth
            curve and keep a fixed-height window around it over the full width, so wide
            1536-px scans are seen whole, not as their centre third).
        interpolation: resize filter.
        local_contrast: subtract a Gaussian-blurred copy (Graham 2015,
            ``4*(img - blur) + 128``) so raw camera photos and publisher-normalised
            crops look alike; ``sigma = size * local_contrast_sigma``.
        circle_mask: zero pixels outside the inscribed circle (fundus) so the camera
            rim, which differs between sources, carries no signal.
    """

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    square: Square = "center_crop"
    interpolation: Interpolation = "bilinear"
    local_contrast: bool = False
    local_contrast_sigma: float = 1 / 60
    circle_mask: bool = False
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        # tuples, not lists, so specs from JSON/YAML compare equal to the code's.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed dict (lists, not tuples) safe for ``torch.load(weights_only=True)``."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocess keys {sorted(unknown)}")
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items()})

    def replace(self, **changes: Any) -> PreprocessSpec:
        return PreprocessSpec.from_dict({**self.to_dict(), **changes})

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"


# Presets referenced by configs and the registry, so a spec is typed once.
PRESETS: dict[str, PreprocessSpec] = {
    # OCTMNIST-style grayscale: centre crop of the short side, like MedMNIST.
    "oct_28": PreprocessSpec(size=28, channels=1, mean=(0.5,), std=(0.5,)),
    "oct_64": PreprocessSpec(size=64, channels=1, mean=(0.5,), std=(0.5,)),
    "oct_128": PreprocessSpec(size=128, channels=1, mean=(0.5,), std=(0.5,)),
    "oct_224": PreprocessSpec(size=224, channels=1, mean=(0.5,), std=(0.5,)),
    # Flattened retina band over the full scan width (the OCT default from v1.0).
    **{
        f"oct_band_{s}": PreprocessSpec(size=s, channels=1, mean=(0.5,), std=(0.5,), square="oct_band")
        for s in (128, 160, 192, 224)
    },
    # Fundus: disc crop + Graham local-contrast normalisation; output centred on 128/255.
    **{
        f"fundus_{s}": PreprocessSpec(
            size=s,
            channels=3,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            square="fundus_disc",
            local_contrast=True,
            circle_mask=True,
        )
        for s in (128, 160, 192, 224, 256, 384, 512)
    },
}


def get_preset(name: str) -> PreprocessSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preprocess preset {name!r}; known: {sorted(PRESETS)}") from None


# ----------------------------------------------------------------------------- prepare


def fundus_disc_box(img: Image.Image, threshold: int = 12) -> tuple[int, int, int, int]:
    """Bounding box ``(left, top, right, bottom)`` of the bright retina disc.

    Written by hand because no maintained library does this for fundus photos: rows and
    columns whose max luminance (on a 4x downscale, for speed and noise) exceeds
    ``threshold`` belong to the disc. Falls back to the full image when nothing is found.
    """
    w, h = img.size
    small = img.convert("L").reduce(4) if min(w, h) >= 64 else img.convert("L")
    fx, fy = w / small.width, h / small.height
    a = np.asarray(small)
    mask = a > threshold
    rows = np.flatnonzero(mask.mean(axis=1) > 0.02)
    cols = np.flatnonzero(mask.mean(axis=0) > 0.02)
    if rows.size < 2 or cols.size < 2:
        return (0, 0, w, h)
    left, right = int(cols[0] * fx), int(min(w, (cols[-1] + 1) * fx))
    top, bottom = int(rows[0] * fy), int(min(h, (rows[-1] + 1) * fy))
    if right - left < w * 0.2 or bottom - top < h * 0.2:
        return (0, 0, w, h)
    return (left, top, right, bottom)


# Window kept around the fitted band centre (the bright RPE/photoreceptor complex), as
# fractions of the scan height: the inner retina lies above it, the choroid below.
# Chosen on the Kermany scans so that thickened DME retinas and CNV elevations stay inside.
_BAND_ABOVE = 0.34
_BAND_BELOW = 0.22
_BAND_WORK_WIDTH = 256  # px: the band is located on a copy this wide (speed; the curve is smooth)


def percentile(a: np.ndarray, q: float) -> np.floating[Any]:
    """``np.percentile(a, q)`` (linear method), the same value and dtype, from a two-element partition.

    Written by hand because numpy's general quantile machinery costs ~0.3 ms per call on a
    small image, for what is two order statistics. The interpolation is numpy's ``_lerp``:
    ``x + d t`` below ``t = 0.5`` and ``y - d (1 - t)`` from it (checked equal to numpy's on
    20,000 random arrays of float32, float64 and integer-valued data).
    """
    flat = a.ravel()
    pos = (flat.size - 1) * (q / 100.0)
    lo = int(np.floor(pos))
    hi = min(lo + 1, flat.size - 1)
    part = np.partition(flat, [lo, hi])
    return numpy_lerp(part[lo], part[hi], pos - lo)


def numpy_lerp(x: Any, y: Any, t: float) -> Any:
    """numpy's ``_lerp`` for the linear percentile between order statistics ``x <= y``: ``x + d t`` below
    ``t = 0.5``, ``y - d (1 - t)`` from it (``d = y - x``), in ``x``'s dtype."""
    d = y - x
    return (y - d * (1 - t)) if t >= 0.5 else (x + d * t)


def oct_band_curve(grey: np.ndarray) -> np.ndarray:
    """Row of the retina band centre for every column of a B-scan: ``float (W,)``.

    Written by hand because no maintained library flattens OCT B-scans (Srinivasan 2014
    flatten the retina the same way before HOG): per column, the intensity-weighted centroid of the
    tissue (pixels above the 60th percentile of a smoothed copy) marks the band; a robust
    quadratic through those rows (two rounds, dropping columns off the fit by more than 6 %
    of the height) gives a smooth curve that
    follows the eye's curvature but not the lesions (a drusen bump or a CNV elevation stays
    a bump after flattening). Saturated fill (the white wedges that rotation-registered
    Kermany exports carry) is ignored.

    Args:
        grey: ``uint8 (H, W)`` B-scan.
    """
    h, w = grey.shape
    # Registration fill (>= 250) is never tissue: to 0, in one OpenCV pass (numpy's where + astype cost 10x).
    img = Image.fromarray(cv2.threshold(np.ascontiguousarray(grey, np.uint8), 249, 255, cv2.THRESH_TOZERO_INV)[1])
    small_w = min(w, _BAND_WORK_WIDTH)
    small_h = max(8, round(h * small_w / w))
    small = img.resize((small_w, small_h), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(3))
    s = np.asarray(small, dtype=np.float32)
    # Tissue = clearly above the vitreous/noise floor; its intensity-weighted centroid per
    # column is steadier than the brightest row, which jumps between RPE, choroid and lesions.
    floor = percentile(s, 60)
    wgt = np.clip(s - floor, 0, None) ** 2
    strength = wgt.sum(axis=0)
    rows = np.arange(small_h, dtype=np.float64)[:, None]
    peak = (wgt * rows).sum(axis=0) / np.maximum(strength, 1e-6) * (h / small_h)
    x = (np.arange(small_w) + 0.5) * (w / small_w)
    keep = strength > percentile(strength, 20)  # dark columns (shadows, fill) say nothing
    if keep.sum() < 8:
        return np.full(w, h / 2.0)
    coef = np.polyfit(x[keep], peak[keep], 2)
    for _ in range(2):
        resid = np.abs(np.polyval(coef, x) - peak)
        inl = keep & (resid < 0.06 * h)
        if inl.sum() < 8:
            break
        coef = np.polyfit(x[inl], peak[inl], 2)
    return np.clip(np.polyval(coef, np.arange(w) + 0.5), 0, h - 1)


def _oct_band(img: Image.Image) -> Image.Image:
    """Flatten the retina band and keep ``_BAND_ABOVE + _BAND_BELOW`` of the height around it.

    Returns an ``L`` image of the full width; the caller resizes it to the model's square.
    Columns are shifted by whole pixels: an integer gather, done by OpenCV's nearest-neighbour
    ``remap`` at integer coordinates (exact; rows outside the scan read 0), which costs a fifth of
    numpy's clip + take_along_axis + where at 1536 px.
    """
    grey = np.asarray(img.convert("L"))
    h, w = grey.shape
    centre = oct_band_curve(grey)
    above, below = round(_BAND_ABOVE * h), round(_BAND_BELOW * h)
    shift = np.round(centre).astype(np.int64)
    rows = (np.arange(-above, below)[:, None] + shift[None, :]).astype(np.float32)
    cols = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], rows.shape)
    out = cv2.remap(
        grey, np.ascontiguousarray(cols), rows, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return Image.fromarray(out, mode="L")


def _pad_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    side = max(w, h)
    fill: int | tuple[int, int, int] = 0 if img.mode == "L" else (0, 0, 0)
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _center_crop_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


@functools.lru_cache(maxsize=32)
def _circle_mask(size: int, shrink: float = 0.98) -> np.ndarray:
    """``bool (size, size)``: True inside the centred circle of diameter ``shrink * size`` (read-only, cached)."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    mask = ((yy - c) ** 2 + (xx - c) ** 2) <= (shrink * size / 2) ** 2
    mask.flags.writeable = False  # shared between calls
    return mask


# Target std of the high-pass image, in 8-bit units: both raw photos (dim, low contrast)
# and publisher-normalised crops (bright, high contrast) are rescaled to it.
_LOCAL_CONTRAST_STD = 32.0


def _pil_gaussian_blur(img: Image.Image, sigma: float) -> Image.Image:
    """PIL's ``GaussianBlur(sigma)``, one band at a time: the same bytes, ~1.6x faster for RGB.

    PIL blurs an RGB image as 4-byte pixels (the padding byte too) and per band independently,
    so blurring the three ``L`` bands and merging them gives identical output with less work.
    """
    blur = ImageFilter.GaussianBlur(sigma)
    if img.mode != "RGB":
        return img.filter(blur)
    return Image.merge("RGB", [band.filter(blur) for band in img.split()])


def _local_contrast(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Graham (2015) local-average subtraction with per-image contrast equalisation.

    ``hp = img - GaussianBlur(img, sigma)`` removes uneven illumination and colour cast;
    ``128 + hp * (32 / std(hp))`` on retina pixels puts every source on one contrast
    scale. Pixels outside the retina (black camera border, discs clipped by a publisher's
    crop, the rim where the blur bleeds) are set to 128, i.e. 0 after normalisation.

    Cost (v2.1, 384 px, one core): ~3 ms, of which PIL's blur is most. The blur stays PIL's
    extended-box Gaussian, because it is part of what the shipped models were trained on (an
    exact Gaussian differs by up to a few grey levels once ``hp`` is rescaled). The erosion of
    the retina mask is OpenCV's ``erode`` (separable, O(1) per pixel): identical to the PIL
    ``MinFilter`` used before (a square min filter; replicating the border adds only values
    already in the window), which is an O(k^2) rank filter and took ~80 % of the time.
    ``tests/unit/test_preprocessing_parity.py`` compares both on real photos.
    """
    sigma = max(0.5, spec.size * spec.local_contrast_sigma)
    # img - blur in float32, in one OpenCV pass (numpy's two conversions and a subtraction cost 10x more).
    hp = cv2.subtract(np.asarray(img), np.asarray(_pil_gaussian_blur(img, sigma)), dtype=cv2.CV_32F)
    # Retina = bright enough, eroded so the blur's halo at the border is excluded too.
    k = max(3, int(round(sigma)) * 2 + 1)
    bright = (np.asarray(img.convert("L")) > 12).astype(np.uint8)
    valid = cv2.erode(bright, np.ones((k, k), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    if spec.circle_mask:
        valid &= _circle_mask(spec.size, shrink=0.96)
    n = int(np.count_nonzero(valid))
    if n:
        # std over every channel of the retina pixels, from per-channel moments in one C++ pass.
        mean_c, std_c = cv2.meanStdDev(hp, mask=valid.view(np.uint8))
        mean_c, var_c = mean_c.ravel(), std_c.ravel() ** 2
        std = float(np.sqrt(max(float(np.mean(var_c + mean_c**2) - np.mean(mean_c) ** 2), 0.0)))
    else:
        std = float(hp.std())
    hp *= np.float32(_LOCAL_CONTRAST_STD / max(std, 1.0))
    hp += np.float32(128.0)
    np.clip(hp, 0, 255, out=hp)
    # Outside the retina: 128. OpenCV's masked copy onto a 128 canvas is ~8x cheaper than
    # numpy's boolean-index assignment broadcast over the channels (same bytes).
    out = np.full(hp.shape, 128, np.uint8)
    cv2.copyTo(hp.astype(np.uint8), valid.view(np.uint8), out)
    return Image.fromarray(out, mode=spec.mode)


def prepare(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Deterministic image-level steps: PIL (any size, any mode) -> PIL ``size x size``.

    The output mode is ``spec.mode``; pixel values stay ``uint8``.
    """
    img = to_standard_mode(img)
    img = img.convert(spec.mode) if img.mode != spec.mode else img
    if spec.square == "fundus_disc":
        img = _pad_square(img.crop(fundus_disc_box(img)))
    elif spec.square == "center_crop":
        img = _center_crop_square(img)
    elif spec.square == "pad":
        img = _pad_square(img)
    elif spec.square == "oct_band":
        img = _oct_band(img)
        if spec.channels == 3:
            img = img.convert("RGB")
    if img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), _PIL_INTERP[spec.interpolation])
    if spec.local_contrast:
        img = _local_contrast(img, spec)
    elif spec.circle_mask:
        a = np.asarray(img).copy()
        a[~_circle_mask(spec.size)] = 0
        img = Image.fromarray(a, mode=spec.mode)
    return img


class Prepare:
    """Picklable callable wrapper of :func:`prepare` (DataLoader workers need pickling)."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec

    def __call__(self, img: Image.Image) -> Image.Image:
        return prepare(img, self.spec)

    def __repr__(self) -> str:
        return f"Prepare(size={self.spec.size}, square={self.spec.square})"


def pil_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL ``L``/``RGB`` -> ``uint8`` tensor ``(C, H, W)`` (other modes: torchvision's ``pil_to_tensor``).

    The same tensor as ``pil_to_tensor``, at half its cost (one numpy copy instead of
    ``tobytes`` + view + permute): it runs for every upload, twice (the gate's view and the model's).
    """
    if img.mode == "RGB":
        return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))
    if img.mode == "L":
        return torch.from_numpy(np.array(img)[None])
    return v2.functional.pil_to_tensor(img)


# ----------------------------------------------------------------------------- tensors


def tail(spec: PreprocessSpec) -> v2.Compose:
    """Prepared ``uint8`` tensor ``(C, size, size)`` or PIL -> float ``(C, size, size)``.

    Values are ``(x/255 - mean) / std``. Accepts batched ``(N, C, H, W)`` too.
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
        ]
    )


def tail_fn(spec: PreprocessSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`tail` as direct calls of the very same torchvision kernels, for per-image hot paths.

    ``uint8 (N, C, S, S)`` -> ``(x / 255 - mean) / std``, equal to ``tail(spec)`` bit for bit (tested).
    The Compose's per-call dispatch costs ~0.5 ms, which is a sixth of the image gate on its 64-px view.
    """
    mean, std = list(spec.mean), list(spec.std)

    def fn(u8: torch.Tensor) -> torch.Tensor:
        return v2.functional.normalize(v2.functional.to_dtype(u8, torch.float32, scale=True), mean, std)

    return fn


def eval_transform(spec: PreprocessSpec) -> Callable[[Image.Image], torch.Tensor]:
    """The only path from an image to a model input: ``PIL -> float (C, size, size)``."""
    return v2.Compose([Prepare(spec), tail(spec)])


class Speckle(torch.nn.Module):
    """Multiplicative Gaussian noise on a ``uint8 (C, H, W)`` image: OCT speckle varies by device.

    torchvision's ``GaussianNoise`` is additive and float-only; speckle is multiplicative.
    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x.float() * (1.0 + self.sigma * torch.randn_like(x, dtype=torch.float32))
        return noisy.clamp(0, 255).to(torch.uint8)


class RandomGamma(torch.nn.Module):
    """``255 * (x/255) ** gamma`` with gamma drawn log-uniformly from ``gammas`` (uint8 in and out)."""

    def __init__(self, gammas: tuple[float, float]) -> None:
        super().__init__()
        self.log_lo, self.log_hi = math.log(gammas[0]), math.log(gammas[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = math.exp(self.log_lo + (self.log_hi - self.log_lo) * float(torch.rand(())))
        return v2.functional.adjust_gamma(x, g)


class ChannelGain(torch.nn.Module):
    """Per-channel contrast and offset about mid-grey on a ``uint8 (C, H, W)`` prepared image.

    Imitates what differs between fundus cameras and clinics after local-average colour
    normalisation (which centres every photo on grey 128): a residual white balance (the
    red, green and blue channels keep different contrasts) and a slight colour cast.
    torchvision's ``ColorJitter`` changes all channels together; this draws one gain per channel.
    """

    def __init__(self, gain: float = 0.25, offset: float = 10.0) -> None:
        super().__init__()
        self.gain, self.offset = gain, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-3]
        g = 1.0 + self.gain * (2 * torch.rand(c, 1, 1) - 1)
        o = self.offset * (2 * torch.rand(c, 1, 1) - 1)
        return (128.0 + (x.float() - 128.0) * g + o).clamp(0, 255).to(torch.uint8)


class Vignette(torch.nn.Module):
    """Radial loss of contrast towards a random point near the centre (uneven illumination).

    ``x' = 128 + (x - 128) * (1 - a r^2)``, ``r`` the distance from the drawn centre over the
    half-width, ``a`` uniform in ``[0, strength]``. Written by hand: torchvision has no
    vignetting transform, and camera illumination fall-off is what raw photos differ by most.
    """

    def __init__(self, strength: float = 0.5) -> None:
        super().__init__()
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        a = self.strength * float(torch.rand(()))
        cy, cx = (0.5 + 0.2 * (torch.rand(2) - 0.5)).tolist()
        yy = (torch.arange(h, dtype=torch.float32) / h - cy).view(-1, 1)
        xx = (torch.arange(w, dtype=torch.float32) / w - cx).view(1, -1)
        fall = (1.0 - a * 4.0 * (yy**2 + xx**2)).clamp(0.2, 1.0)
        return (128.0 + (x.float() - 128.0) * fall).clamp(0, 255).to(torch.uint8)


def augmentations(
    spec: PreprocessSpec, strength: Literal["none", "light", "strong", "camera"] = "light"
) -> v2.Transform:
    """Random ops on prepared ``uint8`` tensors ``(C, size, size)``; shape is preserved.

    ``camera`` (fundus): any rotation and flips, per-channel gain (white balance), gamma,
    vignetting and defocus blur, so that photos from other cameras and clinics, and raw photos
    next to publisher-normalised crops, look alike to the model.
    """
    if strength == "none":
        return v2.Identity()
    interp = _TV_INTERP[spec.interpolation]
    if strength == "camera":
        return v2.Compose(
            [
                v2.RandomResizedCrop(
                    spec.size, scale=(0.8, 1.0), ratio=(0.9, 1.1), interpolation=interp, antialias=True
                ),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.RandomRotation(180, interpolation=interp),
                v2.RandomApply([ChannelGain(0.25, 10.0)], p=0.8),
                RandomGamma((0.75, 1.33)),
                v2.ColorJitter(brightness=0.2, contrast=0.25, saturation=0.2),
                v2.RandomApply([Vignette(0.5)], p=0.5),
                v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.2))], p=0.3),
            ]
        )
    strong = strength == "strong"
    ops: list[Any] = [
        v2.RandomResizedCrop(
            spec.size, scale=(0.6 if strong else 0.85, 1.0), ratio=(0.9, 1.1), interpolation=interp, antialias=True
        ),
        v2.RandomHorizontalFlip(),
    ]
    if spec.square == "oct_band":
        # A flattened B-scan: crops keep the full depth window and most of the width (the
        # lesion may sit anywhere along it); small tilts and shifts as between scanners;
        # speckle and gamma as between devices and signal strengths. No vertical flip:
        # vitreous is always on top.
        ops = [
            v2.RandomResizedCrop(spec.size, scale=(0.7, 1.0), ratio=(0.75, 1.33), interpolation=interp, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=6, translate=(0.04, 0.08), scale=(0.92, 1.08), interpolation=interp),
            RandomGamma((0.7, 1.4)),
            v2.ColorJitter(brightness=0.2, contrast=0.25),
            v2.RandomApply([Speckle(0.25 if strong else 0.15)], p=0.5),
        ]
        return v2.Compose(ops)
    if spec.square == "fundus_disc":
        # A fundus photo has no canonical up; OCT B-scans do (vitreous on top).
        ops += [v2.RandomVerticalFlip(), v2.RandomRotation(180 if strong else 30, interpolation=interp)]
    else:
        ops += [v2.RandomAffine(degrees=10 if strong else 5, translate=(0.05, 0.05), interpolation=interp)]
    ops.append(v2.ColorJitter(brightness=0.3 if strong else 0.15, contrast=0.3 if strong else 0.15))
    if strong:
        ops.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3))
    return v2.Compose(ops)


def train_transform(
    spec: PreprocessSpec, strength: Literal["none", "light", "strong", "camera"] = "light"
) -> Callable[[Image.Image], torch.Tensor]:
    """``PIL -> float (C, size, size)``: prepare, random augmentation, then the eval tail."""
    return v2.Compose([Prepare(spec), v2.PILToTensor(), augmentations(spec, strength), tail(spec)])


def denormalize(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Model input ``(C, H, W)`` -> display image ``(H, W, 3)`` float in ``[0, 1]``."""
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    img = (x.detach().cpu() * std + mean).clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img.permute(1, 2, 0).contiguous()
