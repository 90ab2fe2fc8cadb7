"""The fundus local-contrast step as it was when fundus-resnet18 v2.0 was trained (commit 3f66b11).

Frozen here so ``test_preprocessing_speed_parity.py`` can compare the faster implementation in
``retina.preprocessing`` with what the shipped model was trained on, on real photos.
Not used by the product.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from retina.preprocessing import PreprocessSpec, fundus_disc_box, to_standard_mode

_LOCAL_CONTRAST_STD = 32.0


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
