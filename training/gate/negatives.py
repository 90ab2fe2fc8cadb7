"""Negatives the gate learns "other" from: library sample photographs and generated documents, charts, noise."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from retina.preprocessing import load_image

logger = logging.getLogger("training.gate")


def _font_text(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, ink: tuple[int, ...]) -> None:
    words = ["Dear", "patient", "report", "total", "invoice", "retina", "date", "page", "lorem", "ipsum", "Q3", "2026"]
    y = int(rng.integers(4, 20))
    size = int(rng.integers(8, 22))
    while y < h - size:
        x = int(rng.integers(4, 30))
        line = " ".join(rng.choice(words, size=int(rng.integers(2, 9))))
        draw.text((x, y), line, fill=ink, font_size=size)
        y += int(size * rng.uniform(1.2, 2.0))


def generated_negatives(n_each: int, seed: int = 0) -> Iterator[tuple[str, str, Image.Image]]:
    """``(kind, name, image)``: documents, letters, screenshots, charts, noise, flat and gradient fields."""
    rng = np.random.default_rng(seed)
    for i in range(n_each):
        w, h = int(rng.integers(300, 800)), int(rng.integers(300, 800))
        # a text document / letter: dark ink on paper
        paper = tuple(int(v) for v in rng.integers(215, 256, size=3))
        doc = Image.new("RGB", (w, h), paper)
        _font_text(ImageDraw.Draw(doc), rng, w, h, (int(rng.integers(0, 80)),) * 3)
        yield "document", f"document-{i}", doc
        # dark-mode text (light ink on black): the hard case for a "dark surround" statistic
        dark = Image.new("RGB", (w, h), (int(rng.integers(0, 30)),) * 3)
        _font_text(ImageDraw.Draw(dark), rng, w, h, tuple(int(v) for v in rng.integers(150, 256, size=3)))
        yield "dark_text", f"dark-text-{i}", dark
        # a screenshot: title bar, panels, buttons, text
        shot = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, size=3)))
        d = ImageDraw.Draw(shot)
        d.rectangle((0, 0, w, 28), fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
        for _ in range(int(rng.integers(3, 10))):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(30, h - 30))
            d.rectangle(
                (x0, y0, x0 + int(rng.integers(30, w // 2)), y0 + int(rng.integers(15, h // 3))),
                fill=tuple(int(v) for v in rng.integers(0, 256, size=3)),
            )
        _font_text(d, rng, w, h, tuple(int(v) for v in rng.integers(0, 256, size=3)))
        yield "screenshot", f"screenshot-{i}", shot
        # a chart: axes, lines or bars
        chart = Image.new("RGB", (w, h), (255, 255, 255) if rng.random() < 0.7 else (20, 20, 20))
        d = ImageDraw.Draw(chart)
        d.line((40, h - 40, w - 10, h - 40), fill=(0, 0, 0), width=2)
        d.line((40, 10, 40, h - 40), fill=(0, 0, 0), width=2)
        if rng.random() < 0.5:
            pts = [(40 + k * (w - 60) / 20, h - 40 - rng.uniform(0, h - 60)) for k in range(21)]
            d.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, size=3)), width=3)
        else:
            for k in range(8):
                x0 = 50 + k * (w - 70) // 8
                d.rectangle((x0, h - 40 - rng.uniform(10, h - 60), x0 + (w - 70) // 10, h - 41), fill=(200, 60, 40))
        yield "chart", f"chart-{i}", chart
        # noise: grey, colour, salt and pepper, low-frequency blobs
        kind = i % 4
        if kind == 0:
            a = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        elif kind == 1:
            a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        elif kind == 2:
            a = np.where(rng.random((h, w)) < 0.5, 0, 255).astype(np.uint8)
        else:
            small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            a = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
        yield "noise", f"noise-{i}", Image.fromarray(a)
        # flat and gradient fields (a red-orange gradient on black is a fundus colour statistic)
        c0, c1 = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] if rng.random() < 0.5 else None
        if t is None:
            yy, xx = np.ogrid[:h, :w]
            t = np.clip(np.sqrt(((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2)[..., None] * 2, 0, 1)
        grad = (c0 * (1 - t) + c1 * t).astype(np.uint8)
        yield "gradient", f"gradient-{i}", Image.fromarray(np.broadcast_to(grad, (h, w, 3)).copy())
        yield "flat", f"flat-{i}", Image.new("RGB", (w, h), tuple(int(v) for v in c0))


def sample_photos() -> Iterator[tuple[str, Image.Image]]:
    """The non-retinal sample images scikit-image, scikit-learn and matplotlib ship."""
    import matplotlib
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    for name in (
        "astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "colorwheel", "grass",
        "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "rocket", "text",
        "binary_blobs", "checkerboard", "horse", "shepp_logan_phantom", "chelsea", "motorcycle_left",
    ):  # fmt: skip
        try:
            a = getattr(sk, name)()
        except Exception as e:  # noqa: BLE001 - a sample missing from this scikit-image is not fatal
            logger.warning("skimage.%s unavailable: %s", name, e)
            continue
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif a.dtype != np.uint8:
            a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
        im = Image.fromarray(a)
        yield f"skimage.{name}", im.convert("RGB") if im.mode not in ("L", "RGB") else im
    samples = load_sample_images()
    for fname, a in zip(samples.filenames, samples.images, strict=True):
        yield f"sklearn.{Path(fname).name}", Image.fromarray(a)
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    for fname in ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"):
        if (mpl / fname).is_file():
            yield f"matplotlib.{fname}", load_image(str(mpl / fname))
