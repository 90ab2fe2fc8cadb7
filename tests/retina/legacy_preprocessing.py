"""Preprocessing steps as they were when the shipped models were trained (commit 3f66b11).

The fundus local-contrast step (fundus-resnet18 v2.0) and the OCT band flattening (oct-resnet18 v1.0).

Frozen here so ``test_preprocessing_speed_parity.py`` can compare the faster implementation in
``retina.preprocessing`` with what the shipped model was trained on, on real photos.
Not used by the product.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from retina.image_ops import fundus_disc_box
from retina.preprocessing import PreprocessSpec, get_preset, to_standard_mode

_LOCAL_CONTRAST_STD = 32.0
_BAND_ABOVE = 0.34
_BAND_BELOW = 0.22
_BAND_WORK_WIDTH = 256


def _circle_mask(size: int, shrink: float = 0.98) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    return ((yy - c) ** 2 + (xx - c) ** 2) <= (shrink * size / 2) ** 2


def _pad_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    side = max(w, h)
    fill: int | tuple[int, int, int] = 0 if img.mode == "L" else (0, 0, 0)
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def local_contrast(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    sigma = max(0.5, spec.size * spec.local_contrast_sigma)
    a = np.asarray(img, dtype=np.float32)
    blur = np.asarray(img.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32)
    lum = img.convert("L")
    k = max(3, int(round(sigma)) * 2 + 1)
    valid = np.asarray(lum.point(lambda v: 255 if v > 12 else 0).filter(ImageFilter.MinFilter(k))) > 0
    if spec.circle_mask:
        valid &= _circle_mask(spec.size, shrink=0.96)
    hp = a - blur
    sel = hp[valid] if valid.any() else hp.reshape(-1)
    scale = _LOCAL_CONTRAST_STD / max(float(sel.std()), 1.0)
    out = np.clip(128.0 + hp * scale, 0, 255)
    out[~valid] = 128.0
    return Image.fromarray(out.astype(np.uint8), mode=spec.mode)


def prepare_fundus(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """The old ``prepare`` for a ``fundus_disc`` + ``local_contrast`` spec."""
    img = to_standard_mode(img)
    img = img.convert(spec.mode) if img.mode != spec.mode else img
    img = _pad_square(img.crop(fundus_disc_box(img)))
    if img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
    return local_contrast(img, spec)


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
    a = grey.astype(np.float32)
    a[a >= 250] = 0.0  # registration fill, never tissue
    img = Image.fromarray(a.astype(np.uint8))
    small_w = min(w, _BAND_WORK_WIDTH)
    small_h = max(8, round(h * small_w / w))
    small = img.resize((small_w, small_h), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(3))
    s = np.asarray(small, dtype=np.float32)
    # Tissue = clearly above the vitreous/noise floor; its intensity-weighted centroid per
    # column is steadier than the brightest row, which jumps between RPE, choroid and lesions.
    floor = np.percentile(s, 60)
    wgt = np.clip(s - floor, 0, None) ** 2
    strength = wgt.sum(axis=0)
    rows = np.arange(small_h, dtype=np.float64)[:, None]
    peak = (wgt * rows).sum(axis=0) / np.maximum(strength, 1e-6) * (h / small_h)
    x = (np.arange(small_w) + 0.5) * (w / small_w)
    keep = strength > np.percentile(strength, 20)  # dark columns (shadows, fill) say nothing
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
    Columns are shifted by whole pixels (an integer gather: exact, and a few ms at 1536 px).
    """
    grey = np.asarray(img.convert("L"))
    h, w = grey.shape
    centre = oct_band_curve(grey)
    above, below = round(_BAND_ABOVE * h), round(_BAND_BELOW * h)
    rows = np.arange(-above, below)[:, None] + np.round(centre).astype(np.int64)[None, :]
    inside = (rows >= 0) & (rows < h)
    out = np.take_along_axis(grey, np.clip(rows, 0, h - 1), axis=0)
    out = np.where(inside, out, 0).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def prepare_oct_band(img: Image.Image, size: int = 128) -> Image.Image:
    """The old ``prepare`` for an ``oct_band`` spec (grey, full-width band, resized to ``size``)."""
    spec = get_preset(f"oct_band_{size}")
    band = oct_band(to_standard_mode(img).convert("L"))
    return band.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
