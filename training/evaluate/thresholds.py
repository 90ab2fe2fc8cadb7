"""Referral operating points: a threshold on a class-probability sum, chosen on validation predictions.

The threshold is the largest score that keeps the sensitivity on the fitting predictions at or
above the target (IDx-DR was held to 87.2 %), so the operating point is chosen on validation
(or out-of-fold) predictions only. With several domains (one per camera / dataset) the target
must hold on *every* domain's validation predictions: each domain's own point is the largest
threshold meeting it there, and the served point is the smallest of them
(:func:`minimax_threshold`). That is the threshold that maximises the worst domain's
specificity under the constraint (specificity only rises with the threshold), and it does not
let the biggest domain's probabilities set the point for the others, which a pooled fit does.
Check sets are scored at that fixed threshold, with 95 % bootstrap intervals over patients,
and stored beside it (:func:`store_operating_point`). The service serves it (``/predict``
referral, ``/models``, the UI and the PDF show it); ``RETINA_REFERRAL_*`` settings still override.
``python -m training.evaluate.operating_point`` is the command.

Points (score -> positives):

* ``refer`` (fundus): P(grade >= 2) -> grade >= 2;
* ``urgent`` (fundus): P(grade 4) -> grade 4;
* ``urgent`` (OCT): P(CNV) + P(DME) -> CNV or DME;
* ``routine`` (OCT): P(CNV) + P(DME) + P(DRUSEN) -> any disease.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retina import checkpoint
from retina.labels import DR_GRADES
from training.evaluate.rows import RAW_LONG_SIDE

logger = logging.getLogger("training.evaluate.operating_point")

POINTS: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    # (task, point) -> (classes whose probabilities sum to the score, what a positive is)
    ("fundus", "refer"): (DR_GRADES[2:], "referable DR (grade >= 2)"),
    ("fundus", "urgent"): (DR_GRADES[4:], "proliferative DR (grade 4)"),
    ("oct", "urgent"): (("CNV", "DME"), "CNV or DME"),
    ("oct", "routine"): (("CNV", "DME", "DRUSEN"), "CNV, DME or drusen"),
}


def patient_of(path: str) -> str:
    """The patient of an image path: ``<patient>`` of ``<patient>_<left|right>.jpeg`` (EyePACS, ODIR), else the stem."""
    stem = Path(path).stem
    head, _, eye = stem.rpartition("_")
    return head if head and eye.lower() in ("left", "right") else stem


def _is_raw_photo(path: str) -> bool:
    """A raw camera photo (long side > ``RAW_LONG_SIDE`` px), not a publisher's 256-px crop; header read only."""
    with Image.open(path) as im:
        return max(im.size) > RAW_LONG_SIDE


def read_predictions(
    path: Path | list[Path], classes: tuple[str, ...], *, raw_only: bool = False, groups: bool = False
) -> tuple[np.ndarray, ...]:
    """``(score (N,), positive (N,) bool[, patient (N,) str])`` from ``predictions.csv`` files.

    The files are those ``training.evaluate`` / ``cv`` write. Several are concatenated (e.g. two
    datasets' validation splits); ``raw_only`` keeps raw camera photos only (what users upload),
    as ``training.evaluate --subset raw`` does; ``groups`` adds each row's patient (for a
    bootstrap over patients: both eyes of one patient are not two independent draws).
    """
    scores, pos, pats = [], [], []
    for one in path if isinstance(path, list) else [path]:
        with open(one, newline="") as f:
            for row in csv.DictReader(f):
                if raw_only and not _is_raw_photo(row["path"]):
                    continue
                scores.append(sum(float(row[f"p_{c}"]) for c in classes))
                pos.append(row["label"] in classes)
                pats.append(f"{one}:{patient_of(row['path'])}")
    out = (np.asarray(scores), np.asarray(pos))
    return (*out, np.asarray(pats)) if groups else out


# predictions.csv holds each class probability to 5 decimals, so a summed score (up to 4 classes) can
# sit up to 2e-5 above the served full-precision one; a threshold equal to the binding score would then
# let that very eye fall below it in service (v4.0 first stored 0.10769 for an ODIR eye scoring 0.1076823).
SCORE_ROUNDING = 2e-5


def threshold_for_sensitivity(score: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The largest threshold ``t`` with ``mean(score[positive] >= t) >= target``, less :data:`SCORE_ROUNDING`."""
    s = np.sort(score[positive])[::-1]
    if not len(s):
        raise ValueError("no positives to fit a sensitivity on")
    k = int(np.ceil(target * len(s)))  # this many positives must be at or above t
    return float(s[max(k, 1) - 1]) - SCORE_ROUNDING


def sens_spec(
    score: np.ndarray,
    positive: np.ndarray,
    t: float,
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Sensitivity and specificity at ``t`` with 95 % bootstrap intervals.

    ``groups`` ``(N,)``: resample patients (all their images together), else images.
    """
    pred = score >= t
    rng = np.random.default_rng(seed)
    if groups is not None:
        _, inv = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inv == g) for g in range(inv.max() + 1)]

    def stats(idx: np.ndarray) -> tuple[float, float]:
        p, y = pred[idx], positive[idx]
        sens = float(p[y].mean()) if y.any() else float("nan")
        spec = float((~p[~y]).mean()) if (~y).any() else float("nan")
        return sens, spec

    sens, spec = stats(np.arange(len(score)))

    def draw() -> np.ndarray:
        if groups is None:
            return rng.integers(0, len(score), len(score))
        return np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])

    boots = np.array([stats(draw()) for _ in range(n_boot)])
    ci = np.nanpercentile(boots, [2.5, 97.5], axis=0)
    return {
        "sensitivity": sens,
        "sensitivity_ci95": [float(ci[0, 0]), float(ci[1, 0])],
        "specificity": spec,
        "specificity_ci95": [float(ci[0, 1]), float(ci[1, 1])],
        "n": int(len(score)),
        "n_positive": int(positive.sum()),
        **({"n_patients": int(len(np.unique(groups)))} if groups is not None else {}),
    }


def minimax_threshold(domains: dict[str, tuple[np.ndarray, np.ndarray]], target: float) -> tuple[float, str]:
    """The largest threshold keeping sensitivity >= ``target`` on every domain, and the domain that binds it.

    ``domains``: name -> ``(score (N,), positive (N,) bool)`` validation predictions.
    """
    own = {name: threshold_for_sensitivity(s, y, target) for name, (s, y) in domains.items()}
    binding = min(own, key=lambda k: own[k])
    return own[binding], binding


def store_operating_point(
    checkpoint_path: Path,
    point_name: str,
    sensitivity: float,
    fitted_on: str,
    *,
    fit: list[Path] | None = None,
    fit_domains: dict[str, Path] | None = None,
    checks: dict[str, Path] | None = None,
    raw_only: bool = False,
) -> dict[str, Any]:
    """Fit ``point_name`` on ``fit`` (pooled) or ``fit_domains`` (every domain), score ``checks``, store it.

    Writes the point into the checkpoint's ``extra.operating_points`` (atomically) and returns it.
    Raises ``ValueError`` for a point the task does not have, or for both or neither of the fits.
    """
    meta = checkpoint.meta_from_dict(checkpoint.read(checkpoint_path))
    key = (meta.task, point_name)
    if key not in POINTS:
        raise ValueError(f"no operating point {point_name!r} for task {meta.task!r}; known: {sorted(POINTS)}")
    classes, positive_means = POINTS[key]
    if bool(fit) == bool(fit_domains):
        raise ValueError("give either --fit (pooled) or --fit-domain NAME=P.csv (every domain), not both or neither")
    domains = {
        name: read_predictions(path, classes, raw_only=raw_only, groups=True)
        for name, path in (fit_domains or {}).items()
    }
    if domains:
        t, binding = minimax_threshold({k: v[:2] for k, v in domains.items()}, sensitivity)
        score, pos, pats = (np.concatenate([v[i] for v in domains.values()]) for i in range(3))
        logger.info("every-domain rule: threshold %.4f, bound by %s", t, binding)
    else:
        score, pos, pats = read_predictions(list(fit or []), classes, raw_only=raw_only, groups=True)
        t = threshold_for_sensitivity(score, pos, sensitivity)
    point: dict[str, Any] = {
        "threshold": t,
        "score": f"P({' + '.join(classes)})",
        "positive": positive_means,
        "target_sensitivity": sensitivity,
        "fitted_on": fitted_on,
        "rule": "every domain" if domains else "pooled",
        "fit": sens_spec(score, pos, t, groups=pats),
        "fit_domains": {k: sens_spec(v[0], v[1], t, groups=v[2]) for k, v in domains.items()},
        "checks": {},
    }
    for name, path in (checks or {}).items():
        s, y, g = read_predictions(path, classes, groups=True)
        point["checks"][name] = sens_spec(s, y, t, groups=g)
    points = dict((meta.extra or {}).get("operating_points") or {})
    points[point_name] = point
    checkpoint.update_meta(checkpoint_path, extra={**(meta.extra or {}), "operating_points": points})
    logger.info("%s %s: threshold %.4f, fit %s", meta.task, point_name, t, point["fit"])
    for name, r in point["checks"].items():
        logger.info(
            "  %s: sensitivity %.3f %s, specificity %.3f %s",
            name,
            r["sensitivity"],
            r["sensitivity_ci95"],
            r["specificity"],
            r["specificity_ci95"],
        )
    return point
