"""Copies of images the gate learns from and is checked on, and the batched training augmentation.

* :func:`hard_variants`: *non-retinal* copies of a photograph that share a fundus photo's colour
  statistics (grey, inside a black disc, vignetted, red-orange cast): negatives.
* :func:`capture_variants`: copies of a *real retina* as a poor capture, another camera or a
  diseased eye gives it (dark, over-exposed, small pupil, dust and reflections, field cut at top
  and bottom, off-centre, square or 4:3 framing, blurred, hazy, yellow exudates and red blots):
  positives. A retina with any pathology or exposure is a retina; its gradability is the
  quality step's question, not the gate CNN's.
* :func:`camera_variants` / :func:`degraded`: deterministic copies of the dev images for the report.
* :func:`augment_batch`: light label-preserving changes of gate views, batched.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps
from torch import nn

from retina.quality import gate_thumb


# ----------------------------------------------------------------------------- negatives
def _jpeg(img: Image.Image, q: int = 70) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _disc_mask(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    r = min(w, h) * rng.uniform(0.42, 0.5)
    cx, cy = w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    return m


def _in_disc(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    rgb = img.convert("RGB")
    return Image.composite(rgb, Image.new("RGB", rgb.size, (0, 0, 0)), _disc_mask(rgb.size, rng))


def _vignette(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    h, w = a.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    d = np.sqrt(((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2)
    fall = np.clip(1.0 - d**2 * rng.uniform(0.6, 1.0), 0.0, 1.0)[..., None]
    return Image.fromarray(np.clip(a * fall * rng.uniform(0.35, 0.7), 0, 255).astype(np.uint8))


def _red_cast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    lum = a.mean(axis=2, keepdims=True)
    tint = np.array([1.0, rng.uniform(0.35, 0.6), rng.uniform(0.05, 0.25)], dtype=np.float32)
    mix = rng.uniform(0.6, 0.9)
    out = (1 - mix) * a + mix * lum * tint * rng.uniform(1.0, 1.5)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def hard_variants(img: Image.Image, rng: np.random.Generator) -> dict[str, Image.Image]:
    """Non-retinal copies of a photograph that share one or more of a fundus photo's colour statistics."""
    return {
        "grey": img.convert("L"),
        "disc": _in_disc(img, rng),
        "vignette": _vignette(img, rng),
        "red": _red_cast(img, rng),
        "red_disc": _in_disc(_red_cast(img, rng), rng),
        "red_disc_vignette": _vignette(_in_disc(_red_cast(img, rng), rng), rng),
    }


# ----------------------------------------------------------------------------- positives: poor captures
def _radial(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    """``float32 (H, W)``: distance from ``(cx, cy)`` in units of ``r``."""
    yy, xx = np.ogrid[:h, :w]
    return (np.sqrt((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2) / max(r, 1.0)).astype(np.float32)


def _field(a: np.ndarray) -> tuple[float, float, float]:
    """Centre and radius of the bright field of ``a (H, W, 3) float``: where lesions and shading belong."""
    bright = a.max(axis=2) > 0.1 * max(float(a.max()), 1.0)
    ys, xs = np.nonzero(bright)
    if ys.size < 16:
        h, w = a.shape[:2]
        return w / 2, h / 2, min(h, w) / 2
    return float(xs.mean()), float(ys.mean()), 0.5 * float(max(np.ptp(xs), np.ptp(ys)) + 1)


def _small_pupil(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark, uneven periphery: a small pupil lets light reach only the centre of the field."""
    h, w = a.shape[:2]
    cx, cy, r = _field(a)
    d = _radial(h, w, cx + rng.uniform(-0.15, 0.15) * r, cy + rng.uniform(-0.15, 0.15) * r, r)
    fall = np.clip(1.0 - rng.uniform(0.6, 1.0) * np.clip(d - rng.uniform(0.2, 0.5), 0, None) ** 0.8 * 2, 0.03, 1)
    return a * fall[..., None] * rng.uniform(0.5, 1.0)


def _dust_and_glare(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lens dust (soft dark spots) and reflections (a bright arc or haze near the rim)."""
    h, w = a.shape[:2]
    cx, cy, r = _field(a)
    out = a.copy()
    for _ in range(int(rng.integers(2, 9))):
        sx, sy = cx + rng.uniform(-0.8, 0.8) * r, cy + rng.uniform(-0.8, 0.8) * r
        d = _radial(h, w, sx, sy, rng.uniform(0.02, 0.07) * r * 2)
        out *= 1 - rng.uniform(0.3, 0.8) * np.exp(-(d**2))[..., None]
    if rng.random() < 0.8:
        ang = rng.uniform(0, 2 * np.pi)
        gx, gy = cx + np.cos(ang) * r * rng.uniform(0.5, 0.9), cy + np.sin(ang) * r * rng.uniform(0.5, 0.9)
        d = _radial(h, w, gx, gy, r * rng.uniform(0.2, 0.5))
        glare = rng.uniform(80, 200) * np.exp(-(d**2))[..., None] * np.array([1.0, 0.95, 0.85], np.float32)
        out = out + glare * (a.max(axis=2, keepdims=True) > 8)
    return out


def _lesions(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exudate-like bright yellow spots (scattered, clustered or a circinate ring) and dark red blots."""
    h, w = a.shape[:2]
    cx, cy, r = _field(a)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    over = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    mx, my = cx + rng.uniform(-0.3, 0.3) * r, cy + rng.uniform(-0.2, 0.2) * r  # a "macula"
    mode = rng.integers(0, 3)
    for k in range(int(rng.integers(15, 120))):
        if mode == 0:  # circinate ring
            ang, rad = rng.uniform(0, 2 * np.pi), r * rng.uniform(0.15, 0.3) * rng.uniform(0.85, 1.15)
            x, y = mx + np.cos(ang) * rad, my + np.sin(ang) * rad
        elif mode == 1:  # clustered
            x, y = mx + rng.normal(0, 0.25 * r), my + rng.normal(0, 0.25 * r)
        else:  # scattered
            x, y = cx + rng.uniform(-0.8, 0.8) * r, cy + rng.uniform(-0.8, 0.8) * r
        s = max(0.6, rng.uniform(0.004, 0.018) * 2 * r)
        col = (int(rng.integers(220, 256)), int(rng.integers(190, 240)), int(rng.integers(40, 130)), 255)
        if k % 4 == 3:  # a haemorrhage-like blot
            s *= rng.uniform(1.5, 3.0)
            col = (int(rng.integers(60, 120)), int(rng.integers(5, 30)), int(rng.integers(5, 25)), 235)
        draw.ellipse((x - s, y - s * rng.uniform(0.6, 1.0), x + s, y + s), fill=col)
    over = over.filter(ImageFilter.GaussianBlur(max(0.5, r / 200)))
    return np.asarray(Image.alpha_composite(img.convert("RGBA"), over).convert("RGB"), dtype=np.float32)


def _frame(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """Framing of another camera or export: cut, off-centre, square and filled, or 4:3 with black sides."""
    w, h = img.size
    if kind == "cut_top_bottom":
        c = rng.uniform(0.08, 0.22)
        return img.crop((0, int(h * c), w, int(h * (1 - c * rng.uniform(0.6, 1.2)))))
    if kind == "off_centre":
        canvas = Image.new("RGB", (w, h))
        canvas.paste(img, (int(rng.uniform(-0.2, 0.2) * w), int(rng.uniform(-0.2, 0.2) * h)))
        return canvas
    if kind == "square_filled":  # the field's disc touches (or overflows) a square frame
        a = np.asarray(img, dtype=np.float32)
        cx, cy, r = _field(a)
        s = r * rng.uniform(0.8, 1.05)
        return img.crop((int(cx - s), int(cy - s), int(cx + s), int(cy + s))).resize((256, 256))
    side = max(w, h)  # "wide": 4:3 (or wider) with black sides
    canvas = Image.new("RGB", (int(side * rng.uniform(1.33, 1.6)), side))
    canvas.paste(img, ((canvas.width - w) // 2, (side - h) // 2))
    return canvas


FUNDUS_CAPTURES: tuple[str, ...] = (
    "dark", "very_dark", "overexposed", "small_pupil", "dust_glare", "cut_top_bottom", "off_centre",
    "square_filled", "wide", "blurred", "hazy", "lesions", "lesions_dark", "cropped",
)  # fmt: skip
OCT_CAPTURES: tuple[str, ...] = ("dim", "dark", "soft", "jpeg", "crop", "overexposed")


def _capture(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One named :func:`capture_variants` copy of a retinal image (RGB or L, any size)."""
    w, h = img.size
    if kind in ("dark", "dim"):
        return ImageEnhance.Brightness(img).enhance(rng.uniform(0.25, 0.55))
    if kind == "very_dark":
        return ImageEnhance.Brightness(img).enhance(rng.uniform(0.1, 0.25))
    if kind == "overexposed":
        return ImageEnhance.Brightness(img).enhance(rng.uniform(1.6, 3.5))
    if kind in ("blurred", "soft"):
        return img.filter(ImageFilter.GaussianBlur(max(w, h) / rng.uniform(40, 250)))
    if kind == "jpeg":
        return _jpeg(img, 40)
    if kind == "crop":  # another scanner's field of view
        return img.crop((w // 6, 0, w - w // 6, h))
    if kind == "cropped":  # half the field out of frame
        x0, y0 = rng.uniform(0.1, 0.35), rng.uniform(0.1, 0.35)
        return img.crop((int(w * x0), int(h * y0), int(w * (x0 + 0.5)), int(h * (y0 + 0.5))))
    if kind == "hazy":  # media opacity (cataract): veiling glare and blur
        a = np.asarray(img.filter(ImageFilter.GaussianBlur(max(w, h) / 150)), dtype=np.float32)
        veil = rng.uniform(0.2, 0.5)
        mask = a.max(axis=2, keepdims=True) > 10
        return Image.fromarray(np.clip(a * (1 - veil) + veil * 200 * mask, 0, 255).astype(np.uint8))
    if kind in FUNDUS_CAPTURES and kind not in ("small_pupil", "dust_glare", "lesions", "lesions_dark"):
        return _frame(img, kind, rng)
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    if kind == "small_pupil":
        a = _small_pupil(a, rng)
    elif kind == "dust_glare":
        a = _dust_and_glare(a, rng)
    else:
        a = _lesions(a, rng) * (rng.uniform(0.3, 0.6) if kind == "lesions_dark" else 1.0)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def capture_variants(img: Image.Image, modality: str, rng: np.random.Generator, n: int = 3) -> dict[str, Image.Image]:
    """``n`` random copies of a real retinal image as poor captures, other cameras or diseased eyes give it.

    Made from a 256-px copy (the gate sees 64 px): the same look at a fraction of the cost.
    """
    small = gate_thumb(img, 256)
    small = small.convert("RGB") if modality == "fundus" else small
    kinds = FUNDUS_CAPTURES if modality == "fundus" else OCT_CAPTURES
    return {str(k): _capture(small, str(k), rng) for k in rng.choice(kinds, size=min(n, len(kinds)), replace=False)}


# ----------------------------------------------------------------------------- report copies
def _gamma(img: Image.Image, g: float) -> Image.Image:
    """An ``L`` or ``RGB`` image through the tone curve ``255 (v / 255) ** g`` (a lookup table per band)."""
    lut = [round(255 * (i / 255) ** g) for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _gains(img: Image.Image, rgb: tuple[float, float, float]) -> Image.Image:
    """RGB copy with each channel scaled (a camera's white balance), clipped to 8 bit."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32) * np.asarray(rgb, dtype=np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _burned_in_text(img: Image.Image) -> Image.Image:
    """Capture data printed into the corners, as camera and OCT exports do (eye, date, patient ID)."""
    out = img.convert("RGB")
    draw = ImageDraw.Draw(out)
    w, h = out.size
    font = _font(max(10, h // 40))
    draw.text((w // 60, h // 60), "OD  2019-03-14  10:22", fill=(255, 255, 255), font=font)
    draw.text((w // 60, h - h // 60 - max(10, h // 40)), "ID 00123456  45deg", fill=(255, 255, 255), font=font)
    return out


def camera_variants(img: Image.Image, modality: str) -> dict[str, Image.Image]:
    """Deterministic copies of a gradable image as another camera, scanner or export could give it.

    Not degradations (those are :func:`degraded`): every copy here should still be accepted as
    gradable ``modality``. The shipped gate's verdicts on them are in the report.
    """
    w, h = img.size
    out = {
        "mirrored (other eye)": ImageOps.mirror(img),
        "2x larger": img.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
        "half size": img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX),
        "gamma 0.7 (brighter tone curve)": _gamma(img, 0.7),
        "gamma 1.4 (darker tone curve)": _gamma(img, 1.4),
        "burned-in capture text": _burned_in_text(img),
    }
    if modality == "fundus":
        out |= {
            "green-leaning colour": _gains(img, (0.85, 1.1, 0.9)),
            "yellow-leaning colour": _gains(img, (1.1, 1.05, 0.7)),
            "disc cut at top and bottom": img.crop((0, int(h * 0.12), w, int(h * 0.88))),
            "rotated 15 degrees": img.rotate(15, resample=Image.Resampling.BICUBIC),
        }
    else:
        out |= {
            "2x wider (other scanner)": img.resize((w * 2, h), Image.Resampling.BICUBIC),
            "contrast x1.4": ImageEnhance.Contrast(img).enhance(1.4),
        }
    return out


def degraded(img: Image.Image, modality: str) -> dict[str, Image.Image]:
    """Copies a grader would refuse: blurred, too dark, over-exposed, mostly out of frame / blank."""
    w, h = img.size
    out = {
        "blurred": img.filter(ImageFilter.GaussianBlur(radius=max(w, h) / 80)),
        "dark": ImageEnhance.Brightness(img).enhance(0.2),
        "overexposed": ImageEnhance.Brightness(img).enhance(4.0),
    }
    if modality == "fundus":
        out["cropped"] = img.crop((int(w * 0.3), int(h * 0.3), int(w * 0.7), int(h * 0.7)))
    else:
        out["no_band"] = img.crop((0, 0, w, max(8, h // 6)))  # vitreous only, above the retina
        out["blank"] = Image.new("L", img.size, 40)
    return out


# ----------------------------------------------------------------------------- training
def augment_batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Light, label-preserving changes of gate views: ``uint8 (B, 3, S, S)`` -> ``float (B, 3, S, S)`` in [0, 1].

    Per image: a horizontal flip, a small rotation / shift / zoom (camera framing), brightness,
    contrast and saturation (exposure, camera colour), and on half of the images per-channel
    gains and a gamma (another camera's white balance and tone curve). Written as batched tensor ops because
    torchvision's v2 transforms draw one set of parameters per call, and calling them image
    by image was most of the training time of this 0.1 M-parameter network.
    """
    b = x.shape[0]
    out = x.float().div_(255)

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=g)

    flip = torch.rand(b, generator=g) < 0.5
    out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    ang = torch.deg2rad(u(-10, 10))
    scale = 1.0 / u(0.85, 1.1)
    cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, u(-0.12, 0.12)], 1), torch.stack([sin, cos, u(-0.12, 0.12)], 1)], 1
    )  # (B, 2, 3); translations in [-1, 1] units: 0.12 = 6 % of the side
    grid = nn.functional.affine_grid(theta, list(out.shape), align_corners=False)
    out = nn.functional.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out * u(0.7, 1.3).view(-1, 1, 1, 1)  # brightness
    grey = out.mean(dim=1, keepdim=True)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    out = mean + (out - mean) * u(0.7, 1.3).view(-1, 1, 1, 1)  # contrast
    grey = out.mean(dim=1, keepdim=True)
    out = grey + (out - grey) * u(0.75, 1.25).view(-1, 1, 1, 1)  # saturation
    # Camera colour rendering and tone curve: per-channel gains (white balance, a green- or
    # yellow-leaning sensor) and a gamma. Without them ~10 % of fundus-dev photos with a
    # plausible green cast or a darker tone curve were refused as "other".
    # Half of the views keep the source's colours, so the colour of real fundus photos stays sharp
    # evidence against dark, vignetted or red-cast photographs.
    on = (torch.rand(b, generator=g) < 0.5).view(b, 1, 1, 1)
    gains = torch.stack([u(0.85, 1.15), u(0.85, 1.15), u(0.8, 1.2)], 1).view(b, 3, 1, 1)
    gamma = u(0.7, 1.5).view(-1, 1, 1, 1)
    out = out.clamp_(0, 1)
    return torch.where(on, (out * gains).clamp_(0, 1).pow_(gamma), out)
