"""One picture of fundus photos of each look before and after preprocessing (and a camera augmentation).

    python -m training.evaluate.look_alike --data ../shared/data --out runs/fundus-look/look_alike.png

Rows: EyePACS publisher-normalised crops, EyePACS raw camera photos, IDRiD photos (another
camera), ``fundus-dev`` raw photos; columns: the image as uploaded, what the model sees
(``prepare``), and one draw of the ``camera`` augmentation. It checks by eye that the
preprocessing makes the looks alike. EyePACS images may not be redistributed: keep the
picture under ``runs/`` (it is not for the repo).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from retina.paths import data_dir  # noqa: E402
from retina.preprocessing import augmentations, get_preset, load_image, pil_to_uint8_tensor, prepare  # noqa: E402
from training.cli import setup_logging

logger = logging.getLogger("training.evaluate.look_alike")


def pick(root: Path, per: int = 3) -> dict[str, list[Path]]:
    """A few images of each look, in name order (deterministic)."""
    train = sorted((root / "fundus-train" / "train").glob("*.jpeg"))
    crops, raws = [], []
    for p in train:
        with Image.open(p) as im:
            (crops if im.size == (256, 256) else raws).append(p)
        if len(crops) >= per and len(raws) >= per:
            break
    return {
        "EyePACS crop": crops[:per],
        "EyePACS raw": raws[:per],
        "IDRiD": sorted((root / "fundus-idrid" / "train").glob("*.jpeg"))[:per],
        "fundus-dev raw": sorted((root / "fundus-dev" / "train").glob("*.jpeg"))[:per],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--preset", default="fundus_384")
    ap.add_argument("--per", type=int, default=2, help="images per look")
    ap.add_argument("--out", type=Path, default=Path("runs/fundus-look/look_alike.png"))
    args = ap.parse_args(argv)
    setup_logging()
    spec = get_preset(args.preset)
    aug = augmentations(spec, "camera")
    torch.manual_seed(0)
    looks = pick(args.data or data_dir(), args.per)
    rows = [(name, p) for name, ps in looks.items() for p in ps]
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)))
    for r, (name, p) in enumerate(rows):
        img = load_image(str(p))
        x = pil_to_uint8_tensor(prepare(img, spec))
        panels = [np.asarray(img.convert("RGB")), x.permute(1, 2, 0).numpy(), aug(x).permute(1, 2, 0).numpy()]
        for c, (a, title) in enumerate(zip(panels, ("uploaded", "model input", "camera augmentation"), strict=True)):
            axes[r, c].imshow(a)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(f"{name}\n{p.name}", fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
