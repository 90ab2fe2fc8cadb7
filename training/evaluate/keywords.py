"""Referrals of eyes whose only findings are not DR, per finding (ODIR ``keywords``), at a served point.

    python -m training.evaluate.keywords --predictions runs/fundus-eval-4.0.0/odir-test/predictions.csv \\
        --labels ../shared/data/fundus-odir/labels.csv --checkpoint models/fundus-resnet18.pt [--out R.md]

A DR screen must not refer a glaucomatous, AMD or cataract eye *for DR*: those eyes are the
hard negatives of the screen (ODIR grades them 0). This prints, for the non-referable eyes
(grade < 2) of each finding group, how many were referred at the refer point (1 - specificity),
with a 95 % bootstrap interval over patients, next to the eyes graded "normal fundus".
ODIR's ``weight`` does not change these figures: every grade-0 eye carries the same weight.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np

from retina import checkpoint
from retina.labels import DR_GRADES
from retina.referral import operating_points
from training.cli import setup_logging
from training.evaluate.thresholds import patient_of, sens_spec

logger = logging.getLogger("training.evaluate.keywords")

# finding group -> keywords (ODIR's graders' words) that put an eye in it
GROUPS: dict[str, tuple[str, ...]] = {
    "normal fundus": ("normal fundus",),
    "glaucoma (incl. suspected)": ("glaucoma", "suspected glaucoma"),
    "AMD (dry, wet) or drusen": (
        "dry age-related macular degeneration",
        "wet age-related macular degeneration",
        "age-related macular degeneration",
        "drusen",
    ),
    "cataract or media opacity": ("cataract", "refractive media opacity", "lens dust"),
    "myopia": ("pathological myopia", "myopia retinopathy", "tessellated fundus"),
    "hypertensive retinopathy": ("hypertensive retinopathy",),
    "epiretinal membrane": (
        "macular epiretinal membrane",
        "epiretinal membrane",
        "epiretinal membrane over the macula",
    ),
    "laser spot": ("laser spot",),
}
OTHER_DISEASE = ("glaucoma (incl. suspected)", "AMD (dry, wet) or drusen", "cataract or media opacity", "myopia")


def keyword_table(predictions: Path, labels: Path, threshold: float) -> list[dict[str, object]]:
    """One row per finding group: non-referable eyes, referred share with its 95 % CI (patients resampled)."""
    kw: dict[str, set[str]] = {}
    with open(labels, newline="") as f:
        for row in csv.DictReader(f):
            kw[row["image"]] = {k.strip() for k in row["keywords"].replace(";", ",").split(",") if k.strip()}
    refer_classes = DR_GRADES[2:]
    images, scores, grades = [], [], []
    with open(predictions, newline="") as f:
        for row in csv.DictReader(f):
            images.append(Path(row["path"]).stem)
            scores.append(sum(float(row[f"p_{c}"]) for c in refer_classes))
            grades.append(DR_GRADES.index(row["label"]))
    score, grade = np.asarray(scores), np.asarray(grades)
    patients = np.asarray([patient_of(i) for i in images])
    groups = {**GROUPS, "other disease, no DR (4 groups above)": tuple(k for g in OTHER_DISEASE for k in GROUPS[g])}
    rows: list[dict[str, object]] = []
    for name, words in groups.items():
        mask = np.asarray([bool(kw.get(i, set()) & set(words)) for i in images]) & (grade < 2)
        if not mask.any():
            continue
        r = sens_spec(score[mask], np.zeros(int(mask.sum()), bool), threshold, groups=patients[mask])
        lo, hi = r["specificity_ci95"]
        rows.append({"group": name, "eyes": int(mask.sum()), "referred": 1 - r["specificity"], "ci": (1 - hi, 1 - lo)})
    return rows


def render(rows: list[dict[str, object]], threshold: float, title: str) -> str:
    lines = [
        f"**{title}** (`python -m training.evaluate.keywords`)",
        "",
        f"Non-referable eyes (grade < 2) referred at P(grade >= 2) >= {threshold:.3f}, by finding "
        "(95 % bootstrap interval over patients).",
        "",
        "| finding | eyes | referred for DR |",
        "|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["ci"]  # type: ignore[misc]
        lines.append(f"| {r['group']} | {r['eyes']} | {r['referred']:.2f} [{lo:.2f}, {hi:.2f}] |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate.keywords", description=__doc__.split("\n\n")[0])
    p.add_argument("--predictions", type=Path, required=True, help="predictions.csv from training.evaluate")
    p.add_argument("--labels", type=Path, required=True, help="ODIR labels.csv (image, keywords)")
    p.add_argument("--checkpoint", type=Path, help="take the threshold from its refer operating point")
    p.add_argument("--threshold", type=float, help="or give it")
    p.add_argument("--title", default="Eyes with other findings")
    p.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    setup_logging()
    t = args.threshold
    if t is None:
        if args.checkpoint is None:
            logger.error("give --checkpoint (its refer point) or --threshold")
            return 2
        meta = checkpoint.meta_from_dict(checkpoint.read(args.checkpoint))
        t = float(operating_points(meta)["refer"]["threshold"])
    text = render(keyword_table(args.predictions, args.labels, t), t, args.title)
    logger.info("\n%s", text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
