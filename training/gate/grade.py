"""The learned fundus quality grade: Good / Usable / Reject as EyeQ grades EyePACS photos.

``eyeq-quality.csv`` grades 1,848 of the EyePACS photos (Fu et al. 2019). A multinomial logistic
regression on :data:`retina.quality.GRADE_FEATURES` (from the gate's 128-px copy: exposure,
colour, sharpness at two scales, field shape) is fitted on three quarters of the graded
patients and measured on the rest (patient-disjoint: both eyes of a patient fall on one side),
next to today's hand-set limits on the same held-out photos. The gradable rule the gate ships
with (``limits``, ``grade`` or ``both``) is the one whose gradable / ungradable call agrees best
with EyeQ's Reject there (Cohen's kappa; ``both`` on a tie). The shipped grader is then refitted on every graded photo.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from retina.gate import GATE_CLASSES
from retina.quality import GRADES, QualityGrader, quality_reasons
from training.gate.data import Views

logger = logging.getLogger("training.gate")

C = 0.5  # inverse L2 strength of the regression (23 features, ~1,400 photos)
REJECT_GRID = tuple(np.round(np.arange(0.2, 0.81, 0.05), 2))
HELD_OUT = 0.25  # share of graded patients held out


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


def _model() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


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


def _choose_reject_at(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """P(Reject) cut with the best out-of-fold kappa of "Reject" vs the rest on the training patients."""
    oof = cross_val_predict(_model(), x, y, groups=groups, cv=GroupKFold(5), method="predict_proba")
    return float(max(REJECT_GRID, key=lambda t: cohen_kappa_score(y == 2, oof[:, 2] >= t)))


def fit_grade(
    v: Views, labels: dict[tuple[str, str], dict[str, str]], limits: dict[str, float], seed: int = 0
) -> tuple[QualityGrader, str, dict[str, Any]]:
    """The shipped grader, the gradable rule it won, and the held-out comparison (for the report)."""
    rows, y = graded_rows(v, labels)
    x = np.asarray([v.quality[i]["grade_features"] for i in rows], dtype=np.float64)
    groups = np.asarray([str(v.group[i]).split(":", 1)[1] for i in rows])  # the patient id
    tr, te = next(GroupShuffleSplit(1, test_size=HELD_OUT, random_state=seed).split(x, y, groups))
    reject_at = _choose_reject_at(x[tr], y[tr], groups[tr])
    model = _model().fit(x[tr], y[tr])
    held = _grader(model, reject_at)
    probs = held.probabilities(x[te])
    pred = np.asarray([GRADES.index(held.grade(p)) for p in probs])
    true_bad = y[te] == 2
    grade_bad = pred == 2
    limit_bad = np.asarray([bool(quality_reasons(v.quality[i], limits)) for i in rows[te]])
    res: dict[str, Any] = {
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
    final = _grader(_model().fit(x, y), reject_at)  # shipped: every graded photo
    return final, rule, res
