"""The learned fundus quality grade: Good / Usable / Reject, from EyeQ and from other clinics' graders.

``eyeq-quality.csv`` grades 1,848 of the EyePACS photos (Fu et al. 2019). Those are one camera
family: fitted on them alone, the grade called 29 % of ODIR's photos "Reject" (China, other
cameras), every one of which ODIR's graders had graded for DR, myopic scars among them. So the
photos that another clinic's graders graded (IDRiD, ODIR; not those with a cataract, media
opacity or lens-dust remark) join the fit as "not Reject": half Good, half Usable, since their
graders did not say which. Learned from those alone, the grade would take any look of those
cameras for gradable, blur included; so one degraded copy of each (blurred, dark, over-exposed
or mostly out of frame, at a random strength) joins as Reject. A multinomial logistic regression on
:data:`retina.quality.GRADE_FEATURES` (from the gate's 128-px copy: exposure, colour, sharpness
at two scales, field shape) is fitted on three quarters of the patients and measured on the rest
(patient-disjoint: both eyes of a patient fall on one side): against EyeQ, and as the share of
the other clinics' graded photos it calls ungradable, next to today's hand-set limits and the
EyeQ-only fit. The gradable rule the gate ships with (``limits``, ``grade`` or ``both``) is the
one whose gradable / ungradable call agrees best with EyeQ's Reject there (Cohen's kappa;
``both`` on a tie). The shipped grader is then refitted on every graded photo.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix
from sklearn.model_selection import GroupKFold, GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from retina.gate import GATE_CLASSES
from retina.preprocessing import load_image
from retina.quality import GRADE_FEATURES, GRADES, QualityGrader, fundus_quality, quality_reasons
from training.gate.data import Views

logger = logging.getLogger("training.gate")

C = 0.5  # inverse L2 strength of the regression (23 features, ~1,400 photos)
REJECT_GRID = tuple(np.round(np.arange(0.2, 0.81, 0.05), 2))
HELD_OUT = 0.25  # share of graded patients held out
CLINIC_SETS = ("fundus-idrid", "fundus-odir")  # every photo DR-graded by the clinic's graders
# ODIR findings and remarks under which a graded photo may still be one nobody could grade well
MEDIA_WORDS = ("cataract", "opacity", "lens dust", "vitreous", "low image quality")


def graded_rows(v: Views, labels: dict[tuple[str, str], dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the real fundus views EyeQ graded and their grades ``(N,)`` in 0..2."""
    rows, y = [], []
    fundus = GATE_CLASSES.index("fundus")
    for i in np.flatnonzero((v.y == fundus) & (v.kind == "real")):
        g = labels.get((str(v.source[i]), str(v.name[i])), {}).get("eyeq")
        if g is not None and "grade_features" in v.quality[i]:
            rows.append(i)
            y.append(int(g))
    return np.asarray(rows, dtype=np.int64), np.asarray(y, dtype=np.int64)


def clinic_rows(v: Views, labels: dict[tuple[str, str], dict[str, str]]) -> np.ndarray:
    """Indices of the real fundus views of :data:`CLINIC_SETS` that their graders graded for DR
    (a ``level``), without a media-opacity finding or a quality remark: gradable by that fact."""
    fundus = GATE_CLASSES.index("fundus")
    rows = []
    for i in np.flatnonzero((v.y == fundus) & (v.kind == "real") & np.isin(v.source, CLINIC_SETS)):
        lab = labels.get((str(v.source[i]), str(v.name[i])), {})
        words = (lab.get("keywords", "") + " " + lab.get("quality_keywords", "")).lower()
        if "level" in lab and "grade_features" in v.quality[i] and not any(w in words for w in MEDIA_WORDS):
            rows.append(i)
    return np.asarray(rows, dtype=np.int64)


DEGRADATIONS = ("blurred", "dark", "overexposed", "cropped")


def degrade(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """A copy no grader would grade, at a random strength: ``kind`` in :data:`DEGRADATIONS`."""
    w, h = img.size
    if kind == "blurred":
        return img.filter(ImageFilter.GaussianBlur(max(w, h) / rng.uniform(50, 120)))
    if kind == "dark":
        return ImageEnhance.Brightness(img).enhance(rng.uniform(0.12, 0.3))
    if kind == "overexposed":
        return ImageEnhance.Brightness(img).enhance(rng.uniform(3.0, 5.0))
    f = rng.uniform(0.3, 0.5)  # cropped: a window of the field, no rim
    x0, y0 = rng.uniform(0.5 - f, 0.5, size=2) if f < 0.5 else (0.25, 0.25)
    return img.crop((int(w * x0), int(h * y0), int(w * (x0 + f)), int(h * (y0 + f))))


def degraded_features(v: Views, rows: np.ndarray, root: Path | None, seed: int) -> np.ndarray:
    """``(len(rows), F)`` grade features of one degraded copy of each row's photo (kinds in turn);
    ``(0, F)`` without ``root`` (the photos are not at hand)."""
    if root is None or not len(rows):
        return np.zeros((0, len(GRADE_FEATURES)))
    rng = np.random.default_rng(seed)
    out = []
    for j, i in enumerate(rows):
        img = load_image(str(root / str(v.source[i]) / "train" / str(v.name[i])))
        out.append(fundus_quality(degrade(img, DEGRADATIONS[j % len(DEGRADATIONS)], rng))[1])
    return np.asarray(out, dtype=np.float64)


def _model() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def _fit(x: np.ndarray, y: np.ndarray, xc: np.ndarray | None, xd: np.ndarray | None = None) -> Any:
    """EyeQ rows ``x (N, F)``, ``y (N,)``; the clinics' graded rows ``xc (M, F)`` as half Good, half
    Usable; their degraded copies ``xd (D, F)`` as Reject."""
    xc = np.zeros((0, x.shape[1])) if xc is None else xc
    xd = np.zeros((0, x.shape[1])) if xd is None else xd
    if not len(xc) and not len(xd):
        return _model().fit(x, y)
    xx = np.concatenate([x, xc, xc, xd])
    yy = np.concatenate([y, np.zeros(len(xc), np.int64), np.ones(len(xc), np.int64), np.full(len(xd), 2)])
    w = np.concatenate([np.ones(len(y)), np.full(2 * len(xc), 0.5), np.ones(len(xd))])
    return _model().fit(xx, yy, logisticregression__sample_weight=w)


def _grader(model: Any, reject_at: float) -> QualityGrader:
    sc, lr = model[0], model[1]
    return QualityGrader(
        mean=tuple(float(x) for x in sc.mean_),
        scale=tuple(float(x) for x in sc.scale_),
        coef=tuple(tuple(float(x) for x in r) for r in lr.coef_),
        intercept=tuple(float(x) for x in lr.intercept_),
        reject_at=float(reject_at),
    )


def _binary(pred_bad: np.ndarray, true_bad: np.ndarray) -> dict[str, Any]:
    """Agreement of an ungradable call with EyeQ's Reject: accuracy, kappa, sensitivity, specificity."""
    return {
        "accuracy": float(accuracy_score(true_bad, pred_bad)),
        "kappa": float(cohen_kappa_score(true_bad, pred_bad)),
        "sensitivity (Reject called ungradable)": float(pred_bad[true_bad].mean()) if true_bad.any() else None,
        "specificity (Good/Usable kept)": float((~pred_bad[~true_bad]).mean()) if (~true_bad).any() else None,
        "n": int(len(true_bad)),
    }


def _choose_reject_at(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, xc: np.ndarray | None, xd: np.ndarray | None
) -> float:
    """P(Reject) cut with the best out-of-fold kappa of "Reject" vs the rest on the EyeQ training patients
    (each fold's model also fitted on the clinics' training rows and their degraded copies)."""
    oof = np.zeros((len(y), 3))
    for tr, te in GroupKFold(5).split(x, y, groups):
        oof[te] = _fit(x[tr], y[tr], xc, xd).predict_proba(x[te])
    return float(max(REJECT_GRID, key=lambda t: cohen_kappa_score(y == 2, oof[:, 2] >= t)))


def _clinic_ungradable(graders: dict[str, QualityGrader], v: Views, rows: np.ndarray, xd: np.ndarray) -> dict[str, Any]:
    """Per set: the share of held-out clinic-graded photos (``rows``) each grader calls ungradable, and
    of their degraded copies (``xd``, one per row; empty without the photos) the share it catches."""
    out: dict[str, Any] = {}
    if not len(rows):
        return out
    x = np.asarray([v.quality[i]["grade_features"] for i in rows], dtype=np.float64)
    for s in CLINIC_SETS:
        m = v.source[rows] == s
        if not m.any():
            continue
        row: dict[str, Any] = {"n": int(m.sum())}
        for name, g in graders.items():
            row[name] = float(np.mean([g.grade(p) == "Reject" for p in g.probabilities(x[m])]))
            if len(xd):
                row[f"{name}: degraded copies caught"] = float(
                    np.mean([g.grade(p) == "Reject" for p in g.probabilities(xd[m])])
                )
        out[s] = row
    return out


def fit_grade(
    v: Views,
    labels: dict[tuple[str, str], dict[str, str]],
    limits: dict[str, float],
    seed: int = 0,
    root: Path | None = None,
) -> tuple[QualityGrader, str, dict[str, Any]]:
    """The shipped grader, the gradable rule it won, and the held-out comparison (for the report).

    ``root``: the data root, to degrade the clinics' photos (None: no degraded copies)."""
    rows, y = graded_rows(v, labels)
    x = np.asarray([v.quality[i]["grade_features"] for i in rows], dtype=np.float64)
    groups = np.asarray([str(v.group[i]).split(":", 1)[1] for i in rows])  # the patient id
    tr, te = next(GroupShuffleSplit(1, test_size=HELD_OUT, random_state=seed).split(x, y, groups))
    crows = clinic_rows(v, labels)
    xc = np.asarray([v.quality[i]["grade_features"] for i in crows], dtype=np.float64).reshape(-1, x.shape[1])
    ctr, cte = (
        next(GroupShuffleSplit(1, test_size=HELD_OUT, random_state=seed).split(xc, groups=v.group[crows]))
        if len(crows) >= 8
        else (np.arange(len(crows)), np.arange(0))
    )
    xd = degraded_features(v, crows, root, seed)  # one copy per clinic row, same order
    xd_tr, xd_te = (xd[ctr], xd[cte]) if len(xd) else (xd, xd)
    reject_at = _choose_reject_at(x[tr], y[tr], groups[tr], xc[ctr], xd_tr)
    held = _grader(_fit(x[tr], y[tr], xc[ctr], xd_tr), reject_at)
    eyeq_only = _grader(_model().fit(x[tr], y[tr]), _choose_reject_at(x[tr], y[tr], groups[tr], None, None))
    probs = held.probabilities(x[te])
    pred = np.asarray([GRADES.index(held.grade(p)) for p in probs])
    true_bad = y[te] == 2
    grade_bad = pred == 2
    limit_bad = np.asarray([bool(quality_reasons(v.quality[i], limits)) for i in rows[te]])
    res: dict[str, Any] = {
        "n_clinic_graded": int(len(crows)),
        "clinic_ungradable_held_out": _clinic_ungradable(
            {"grade": held, "EyeQ-only grade": eyeq_only}, v, crows[cte], xd_te
        ),
        "n_graded": int(len(rows)),
        "n_train": int(len(tr)),
        "n_held_out": int(len(te)),
        "held_out_patients": int(len(set(groups[te]))),
        "eyeq_counts_held_out": {GRADES[k]: int((y[te] == k).sum()) for k in range(3)},
        "reject_at": reject_at,
        "three_class": {
            "accuracy": float(accuracy_score(y[te], pred)),
            "kappa_quadratic": float(cohen_kappa_score(y[te], pred, weights="quadratic")),
            "kappa": float(cohen_kappa_score(y[te], pred)),
            "confusion (rows EyeQ Good/Usable/Reject, cols predicted)": confusion_matrix(
                y[te], pred, labels=[0, 1, 2]
            ).tolist(),
        },
        "ungradable_vs_eyeq_reject": {
            "limits": _binary(limit_bad, true_bad),
            "grade": _binary(grade_bad, true_bad),
            "both": _binary(limit_bad | grade_bad, true_bad),
        },
    }
    # On a tie "both" wins: the limits then still catch what EyeQ's photos seldom show (a very dark copy).
    rule = max(("both", "grade", "limits"), key=lambda r: res["ungradable_vs_eyeq_reject"][r]["kappa"])
    res["gradable_rule"] = rule
    logger.info("quality grade held out: %s; rule %s", res["three_class"], rule)
    final = _grader(_fit(x, y, xc, xd), reject_at)  # shipped: every graded photo
    return final, rule, res
