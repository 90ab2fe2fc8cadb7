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
  transform is literally the training tail (tested in ``tests/retina``).

Mean and std are never retyped elsewhere: they come from the spec.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

# Decoding has its own module; these names stay importable from here for modules written against
# the old layout (training/fit_gate.py reads load_image from here).
from retina.decode import decode_image, load_image, to_standard_mode
from retina.errors import ImageDecodeError
from retina.image_ops import center_crop_square, circle_mask, fundus_disc_box, local_contrast, oct_band, pad_square

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


def prepare(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Deterministic image-level steps: PIL (any size, any mode) -> PIL ``size x size``.

    The output mode is ``spec.mode``; pixel values stay ``uint8``.
    """
    img = to_standard_mode(img)
    img = img.convert(spec.mode) if img.mode != spec.mode else img
    if spec.square == "fundus_disc":
        img = pad_square(img.crop(fundus_disc_box(img)))
    elif spec.square == "center_crop":
        img = center_crop_square(img)
    elif spec.square == "pad":
        img = pad_square(img)
    elif spec.square == "oct_band":
        img = oct_band(img)
        if spec.channels == 3:
            img = img.convert("RGB")
    if img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), _PIL_INTERP[spec.interpolation])
    if spec.local_contrast:
        img = local_contrast(img, spec.local_contrast_sigma, spec.circle_mask)
    elif spec.circle_mask:
        a = np.asarray(img).copy()
        a[~circle_mask(spec.size)] = 0
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
