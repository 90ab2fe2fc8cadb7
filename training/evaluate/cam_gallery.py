"""A picture of Grad-CAM overlays on real images, to check where a model looks.

    python -m training.evaluate.cam_gallery --checkpoint models/oct-resnet18.pt --data ../shared/data/oct-dev \\
        --out models/cards/oct-resnet18/cam_gallery.png [--per-class 3] [--method gradcam]

One row per class: the prepared model input and its CAM overlay for a few images of that
class (the explained class is the predicted one, as ``/gradcam`` does by default), with the
true and predicted labels. Also prints the share of CAM mass in the outer 10 % border of the
input, a number for "is it looking at the image corners" (a map spread evenly gives 0.19).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from retina import checkpoint
from retina.cam import Explainer, overlay
from retina.models import cam_layer_for
from retina.preprocessing import denormalize, load_image, pil_to_uint8_tensor, prepare, tail
from training.cli import setup_logging
from training.data.tables import read_tables

logger = logging.getLogger("training.evaluate.cam_gallery")


def border_share(heat: np.ndarray, frac: float = 0.1) -> float:
    """Share of a CAM ``(H, W)`` (non-negative) that lies in the outer ``frac`` border."""
    h, w = heat.shape
    bh, bw = max(1, round(h * frac)), max(1, round(w * frac))
    inner = heat[bh : h - bh, bw : w - bw].sum()
    total = heat.sum()
    return float(1 - inner / total) if total > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate.cam_gallery", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=3)
    p.add_argument("--method", default="gradcam")
    p.add_argument("--tile", type=int, default=192)
    args = p.parse_args(argv)
    setup_logging()
    model, meta = checkpoint.load(args.checkpoint)
    spec, names = meta.preprocess, list(meta.class_names)
    table = read_tables(args.data, task=meta.task)
    t = args.tile
    canvas = Image.new("RGB", (2 * t * args.per_class, (t + 16) * len(names)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    shares = []
    with Explainer(model, cam_layer_for(meta.arch), args.method) as ex:
        for row, cls in enumerate(names):
            idx = np.flatnonzero(table.labels == row)[: args.per_class]
            for col, i in enumerate(idx):
                pixels = pil_to_uint8_tensor(prepare(load_image(table.paths[i]), spec))  # decoded as uploads are
                x = tail(spec)(pixels).unsqueeze(0)  # (1, C, S, S): the tensor /predict scores
                with torch.no_grad():
                    pred = int(model(x).argmax())
                heat = ex(x, None)[0]
                shares.append(border_share(heat))
                rgb = denormalize(x[0], spec).numpy()
                blended = overlay(rgb, heat, 0.45)
                img = Image.fromarray((rgb * 255).astype(np.uint8)).resize((t, t))
                cam = Image.fromarray(blended).resize((t, t))
                x0, y0 = 2 * t * col, (t + 16) * row
                canvas.paste(img, (x0, y0 + 16))
                canvas.paste(cam, (x0 + t, y0 + 16))
                draw.text((x0 + 2, y0 + 2), f"true {cls} / predicted {names[pred]}", fill=(0, 0, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    logger.info(
        "wrote %s; CAM mass in the outer 10%% border: median %.2f (uniform 0.19)", args.out, float(np.median(shares))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
