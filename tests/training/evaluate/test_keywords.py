"""training.evaluate.keywords: referrals of non-DR eyes per finding, on a small hand-made table."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.evaluate.keywords import keyword_table, render

HEAD = "path,label,pred,p_No DR,p_Mild,p_Moderate,p_Severe,p_Proliferative"


def _write(tmp_path: Path, rows: list[tuple[str, str, float, str]]) -> tuple[Path, Path]:
    """rows: (image, label, P(grade >= 2), keywords) -> predictions.csv and labels.csv."""
    preds, labels = [HEAD], ["image,patient_id,eye,level,weight,keywords,quality_keywords,age,sex"]
    for image, label, p_ref, kw in rows:
        preds.append(f"/d/train/{image}.jpeg,{label},{label},{1 - p_ref:.3f},0,{p_ref:.3f},0,0")
        labels.append(f'{image},{image.split("_")[0]},x,0,4,"{kw}",,60,Male')
    (tmp_path / "p.csv").write_text("\n".join(preds) + "\n")
    (tmp_path / "l.csv").write_text("\n".join(labels) + "\n")
    return tmp_path / "p.csv", tmp_path / "l.csv"


def test_referred_share_per_finding_counts_only_non_referable_eyes(tmp_path: Path) -> None:
    p, lab = _write(
        tmp_path,
        [
            ("1_left", "No DR", 0.9, "glaucoma"),  # referred
            ("1_right", "No DR", 0.1, "glaucoma"),  # not referred
            ("2_left", "No DR", 0.05, "normal fundus"),
            ("3_left", "Moderate", 0.95, "glaucoma; moderate non proliferative retinopathy"),  # referable: left out
            ("4_left", "No DR", 0.6, "dry age-related macular degeneration"),
        ],
    )
    rows = {r["group"]: r for r in keyword_table(p, lab, threshold=0.5)}
    assert rows["glaucoma (incl. suspected)"]["eyes"] == 2
    assert rows["glaucoma (incl. suspected)"]["referred"] == pytest.approx(0.5)
    assert rows["normal fundus"]["referred"] == 0.0
    assert rows["AMD (dry, wet) or drusen"]["referred"] == 1.0
    assert rows["other disease, no DR (4 groups above)"]["eyes"] == 3
    assert "| glaucoma (incl. suspected) | 2 | 0.50" in render(list(rows.values()), 0.5, "t")
