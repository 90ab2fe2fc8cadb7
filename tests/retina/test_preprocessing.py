"""The one preprocessing definition: decode safety, spec round-trip, train tail == served."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from retina import checkpoint
from retina.models import build_model
from retina.preprocessing import (
    PRESETS,
    ImageDecodeError,
    PreprocessSpec,
    augmentations,
    decode_image,
    eval_transform,
    get_preset,
    pil_to_uint8_tensor,
    prepare,
    tail,
    train_transform,
)


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_spec_round_trips_through_checkpoint(tmp_path):
    spec = PRESETS["fundus_224"]
    model = build_model("simplecnn", in_channels=3, num_classes=5)
    p = checkpoint.save(
        tmp_path / "m.pt",
        model,
        arch="simplecnn",
        model_args={"in_channels": 3, "num_classes": 5},
        task="fundus",
        class_names=list("abcde"),
        preprocess=spec,
    )
    raw = torch.load(p, weights_only=True)
    assert PreprocessSpec.from_dict(raw["preprocess"]) == spec
    _, meta = checkpoint.load(p)
    assert meta.preprocess == spec


@pytest.mark.parametrize("name", ["oct_28", "oct_128", "fundus_224"])
def test_train_tail_equals_served_transform(name):
    """Training caches prepare() and applies tail(); serving applies eval_transform()."""
    spec = PRESETS[name]
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8))
    served = eval_transform(spec)(img)
    cached = pil_to_uint8_tensor(prepare(img, spec))
    trained = tail(spec)(augmentations(spec, "none")(cached))
    assert served.shape == (spec.channels, spec.size, spec.size)
    assert torch.equal(served, trained)
    aug = train_transform(spec, "strong")(img)
    assert aug.shape == served.shape and aug.dtype == served.dtype


def test_prepare_is_deterministic_and_sized():
    spec = PRESETS["fundus_224"]
    img = Image.new("RGB", (768, 512), (90, 40, 20))
    a, b = prepare(img, spec), prepare(img, spec)
    assert a.size == (224, 224) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (64, 48), 100),
        lambda: Image.new("RGBA", (64, 48), (10, 200, 30, 128)),
        lambda: Image.new("P", (64, 48), 3),
        lambda: Image.new("CMYK", (64, 48), (0, 50, 100, 0)),
        lambda: Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)),
    ],
    ids=["L", "RGBA", "P", "CMYK", "16bit"],
)
def test_decode_normalises_modes(make):
    img = make()
    fmt = "JPEG" if img.mode == "CMYK" else ("TIFF" if img.mode.startswith("I") else "PNG")
    out = decode_image(_png(img, fmt))
    assert out.mode in ("L", "RGB")
    assert out.size == (64, 48)
    for name in ("oct_64", "fundus_128"):
        x = eval_transform(PRESETS[name])(out)
        assert torch.isfinite(x).all()


def test_sixteen_bit_uses_full_range():
    a = np.linspace(1000, 3000, 64 * 48).reshape(48, 64).astype(np.uint16)
    out = np.asarray(decode_image(_png(Image.fromarray(a), "TIFF")))
    assert out.min() == 0 and out.max() == 255


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (80, 40), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode_image(_png(img, "JPEG", exif=exif))
    assert out.size == (40, 80)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (b"hello, this is not an image", "unsupported_image"),
    ],
)
def test_decode_rejects_non_images(data, code):
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data)
    assert e.value.code == code


def test_decode_rejects_truncated():
    data = _png(Image.new("RGB", (256, 256), (1, 2, 3)), "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(data[: len(data) // 2])


def test_decode_rejects_bomb_without_decoding():
    # 20000 x 20000 zeros compress to a few hundred KB; the header alone is refused.
    img = Image.new("L", (20000, 20000))
    data = _png(img, "PNG", optimize=False)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(data, max_pixels=50_000_000)
    assert e.value.code == "image_too_large"


def test_spec_validation():
    with pytest.raises(ValueError):
        PreprocessSpec(size=64, channels=2, mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ValueError):
        PreprocessSpec(size=64, channels=3, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError):
        PreprocessSpec.from_dict({**PRESETS["oct_28"].to_dict(), "bogus": 1})


def test_real_fundus_sources_look_alike(fundus_dev, fundus_train):
    """Raw camera photos and publisher crops end on one contrast scale after prepare()."""
    from retina.preprocessing import load_image

    spec = PRESETS["fundus_224"]
    raw = sorted((fundus_dev / "train").glob("*.jpeg"))[:6]
    crops = [p for p in sorted((fundus_train / "train").glob("*.jpeg"))[:40] if Image.open(p).size == (256, 256)][:6]
    assert raw and crops

    def stds(paths):
        return [float(np.asarray(prepare(load_image(str(p)), spec), dtype=np.float32).std()) for p in paths]

    s_raw, s_crop = np.mean(stds(raw)), np.mean(stds(crops))
    assert abs(s_raw - s_crop) / s_crop < 0.35, (s_raw, s_crop)


def _curved_scan(w: int = 768, h: int = 496, sag: float = 80.0) -> Image.Image:
    """A synthetic B-scan: speckle plus a bright 20-px band following a parabola (the eye's curvature)."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 40, (h, w)).astype(np.uint8)
    x = np.arange(w)
    centre = 200 + sag * ((x - w / 2) / (w / 2)) ** 2
    for col in range(w):
        c = int(centre[col])
        a[c - 10 : c + 10, col] = 200
    a[:40, : w // 5] = 255  # a white registration wedge, which must be ignored
    return Image.fromarray(a, mode="L")


def test_oct_band_follows_and_flattens_the_retina() -> None:
    from retina.image_ops import oct_band, oct_band_curve

    img = _curved_scan()
    curve = oct_band_curve(np.asarray(img))
    x = np.arange(img.width)
    truth = 200 + 80 * ((x - img.width / 2) / (img.width / 2)) ** 2
    assert np.abs(curve - truth).max() < 8  # rows, out of 496
    flat = np.asarray(oct_band(img), dtype=np.float32)
    rows = flat.argmax(axis=0)
    assert flat.shape[1] == img.width  # the full width is kept
    assert rows.max() - rows.min() <= 20  # the band is straight after flattening


def test_oct_band_preset_gives_the_square_model_input_and_trains_on_the_same_tail() -> None:
    spec = get_preset("oct_band_128")
    out = prepare(_curved_scan(1536, 496), spec)
    assert out.size == (128, 128) and out.mode == "L"
    aug = augmentations(spec, "light")(pil_to_uint8_tensor(out))
    assert aug.shape == (1, 128, 128) and aug.dtype == torch.uint8


@pytest.mark.parametrize("preset", ["oct_band_128", "fundus_384", "oct_64"])
def test_tail_fn_equals_tail_bit_for_bit(preset: str) -> None:
    """The gate's fast tail is the same function as the tail training and serving compose."""
    from retina.preprocessing import tail_fn

    spec = get_preset(preset)
    u8 = torch.randint(0, 256, (3, spec.channels, spec.size, spec.size), dtype=torch.uint8)
    assert torch.equal(tail_fn(spec)(u8), tail(spec)(u8))


def test_percentile_equals_numpys_value_and_dtype() -> None:
    """``retina.image_ops.percentile`` replaces ``np.percentile`` in the OCT band and the gate: it must be exact."""
    from retina.image_ops import percentile

    rng = np.random.default_rng(0)
    for i in range(3000):
        n = int(rng.integers(1, 3000))
        a = [rng.integers(0, 256, n).astype(np.float32), rng.random(n).astype(np.float32) * 255, rng.random(n)][i % 3]
        q = float(rng.choice([1, 20, 37.3, 50, 60, 99, 100]))
        got, want = percentile(a, q), np.percentile(a, q)
        assert got == want and np.asarray(got).dtype == np.asarray(want).dtype, (n, q, got, want)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16"])
def test_pil_to_uint8_tensor_equals_torchvisions(mode: str) -> None:
    from torchvision.transforms import v2

    from retina.preprocessing import pil_to_uint8_tensor

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode)
    got, want = pil_to_uint8_tensor(img), v2.functional.pil_to_tensor(img)
    assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    if mode in ("RGB", "L"):  # the fast path also hands the batcher contiguous memory
        assert got.is_contiguous()
