"""The image-level operations that ``retina.preprocessing.prepare`` composes (PIL in, PIL out).

* squaring: :func:`fundus_disc_box` (crop to the bright retina disc), :func:`oct_band` (flatten
  the retina band of a B-scan along a smooth curve), :func:`pad_square`, :func:`center_crop_square`;
* :func:`circle_mask` and :func:`local_contrast` (Graham's local-average subtraction), the fundus
  colour normalisation;
* :func:`percentile` and :func:`numpy_lerp`, numpy's linear percentile without its overhead
  (the image gate's quality checks use them too).

Which of them run, and with what size, is the spec's choice (``retina.preprocessing``); nothing
here knows about a spec, a model or a tensor.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageFilter


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


def oct_band(img: Image.Image) -> Image.Image:
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


def pad_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    side = max(w, h)
    fill: int | tuple[int, int, int] = 0 if img.mode == "L" else (0, 0, 0)
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def center_crop_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


@functools.lru_cache(maxsize=32)
def circle_mask(size: int, shrink: float = 0.98) -> np.ndarray:
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


def local_contrast(img: Image.Image, sigma_fraction: float, mask_circle: bool) -> Image.Image:
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
    ``tests/retina/test_preprocessing_parity.py`` compares both on real photos.

    Args:
        img: ``L`` or ``RGB``, already squared and resized to the model's size ``S``.
        sigma_fraction: the blur's sigma as a fraction of ``S`` (the spec's ``local_contrast_sigma``).
        mask_circle: also treat pixels outside the inscribed circle as outside the retina.
    """
    size = img.width  # a square, already at the model's size
    sigma = max(0.5, size * sigma_fraction)
    # img - blur in float32, in one OpenCV pass (numpy's two conversions and a subtraction cost 10x more).
    hp = cv2.subtract(np.asarray(img), np.asarray(_pil_gaussian_blur(img, sigma)), dtype=cv2.CV_32F)
    # Retina = bright enough, eroded so the blur's halo at the border is excluded too.
    k = max(3, int(round(sigma)) * 2 + 1)
    bright = (np.asarray(img.convert("L")) > 12).astype(np.uint8)
    valid = cv2.erode(bright, np.ones((k, k), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    if mask_circle:
        valid &= circle_mask(size, shrink=0.96)
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
    return Image.fromarray(out, mode=img.mode)
