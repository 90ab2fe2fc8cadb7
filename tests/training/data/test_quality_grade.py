"""The learned quality grade learns "gradable" from other clinics' graded photos, not only from EyeQ."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from retina.gate import GATE_CLASSES
from retina.quality import GRADE_FEATURES
from training.gate.data import Views
from training.gate.grade import DEGRADATIONS, clinic_rows, degrade, fit_grade

F = len(GRADE_FEATURES)


def _views(rng: np.random.Generator) -> tuple[Views, dict]:
    """EyeQ-graded EyePACS photos whose Reject grade sits at high feature 0, and ODIR photos shifted
    to high feature 0 by their camera (all graded by ODIR's graders), half of them with a cataract."""
    feats, source, name, group, labels = [], [], [], [], {}
    for i in range(600):
        g = i % 3
        f = rng.normal(0, 1, F)
        f[0] = (2.0 if g == 2 else 0.0) + rng.normal(0, 0.3)
        feats.append(f), source.append("fundus-train"), name.append(f"{i}.jpeg"), group.append(f"t:{i // 2}")
        labels[("fundus-train", f"{i}.jpeg")] = {"eyeq": str(g), "level": "0"}
    for i in range(200):
        f = rng.normal(0, 1, F)
        f[0] = 1.6 + rng.normal(0, 0.3)  # another camera: looks like EyeQ's Reject on feature 0
        f[1] = 3.0  # ... but carries its own signature
        feats.append(f), source.append("fundus-odir"), name.append(f"o{i}.jpeg"), group.append(f"o:{i // 2}")
        words = "cataract" if i % 2 else "normal fundus"
        labels[("fundus-odir", f"o{i}.jpeg")] = {"level": "0", "keywords": words, "quality_keywords": ""}
    n = len(feats)
    v = Views(
        x=torch.zeros((n, 3, 2, 2), dtype=torch.uint8),
        y=np.full(n, GATE_CLASSES.index("fundus")),
        group=np.asarray(group),
        kind=np.full(n, "real"),
        source=np.asarray(source),
        name=np.asarray(name),
        field=np.zeros((n, 1)),
        quality=[{"grade_features": f.tolist()} for f in feats],
    )
    return v, labels


def test_clinic_rows_are_the_graded_photos_without_a_media_finding() -> None:
    v, labels = _views(np.random.default_rng(0))
    rows = clinic_rows(v, labels)
    assert len(rows) == 100 and set(v.source[rows]) == {"fundus-odir"}
    assert all(labels[("fundus-odir", str(v.name[i]))]["keywords"] == "normal fundus" for i in rows)


def test_the_grade_stops_calling_another_cameras_graded_photos_ungradable() -> None:
    v, labels = _views(np.random.default_rng(0))
    _, _, res = fit_grade(v, labels, limits={}, seed=0)
    odir = res["clinic_ungradable_held_out"]["fundus-odir"]
    assert odir["EyeQ-only grade"] > 0.5  # fitted on EyeQ alone, the camera shift reads as Reject
    assert odir["grade"] < 0.1
    assert res["three_class"]["accuracy"] > 0.6  # EyeQ's own grades are still learned


def test_degraded_copies_are_what_their_names_say() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(60, 160, (200, 300, 3), dtype=np.uint8))  # fine detail everywhere
    base = np.asarray(img, dtype=np.float64)
    dark = np.asarray(degrade(img, "dark", rng), dtype=np.float64)
    bright = np.asarray(degrade(img, "overexposed", rng), dtype=np.float64)
    blurred = np.asarray(degrade(img, "blurred", rng), dtype=np.float64)
    crop = degrade(img, "cropped", rng)
    assert dark.mean() < 0.35 * base.mean() and bright.mean() > 1.5 * base.mean()
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.3 * np.abs(np.diff(base, axis=1)).mean()
    assert crop.size[0] <= 0.5 * 300 + 1 and crop.size[1] <= 0.5 * 200 + 1
    assert set(DEGRADATIONS) == {"blurred", "dark", "overexposed", "cropped"}


def test_without_other_clinics_the_grade_is_fitted_on_eyeq_alone() -> None:
    """A data root without IDRiD / ODIR (or a --limit smoke run with a handful of them) still fits."""
    v, labels = _views(np.random.default_rng(0))
    for keep in (0, 3):
        odir = np.flatnonzero(v.source == "fundus-odir")[: 2 * keep]  # every other one has a cataract
        rows = np.r_[np.flatnonzero(v.source == "fundus-train"), odir]
        sub = Views(
            x=v.x[rows],
            y=v.y[rows],
            group=v.group[rows],
            kind=v.kind[rows],
            source=v.source[rows],
            name=v.name[rows],
            field=v.field[rows],
            quality=[v.quality[i] for i in rows],
        )
        grader, _, res = fit_grade(sub, labels, limits={}, seed=0)
        assert res["n_clinic_graded"] == keep and res["clinic_ungradable_held_out"] == {}
        assert res["three_class"]["accuracy"] > 0.6 and grader.reject_at > 0
