"""Check the exam rule (``retina.exam``) on per-image predictions of patients with both eyes photographed.

    python -m training.evaluate.exams --checkpoint models/fundus-resnet18.pt \\
        --predictions runs/fundus2-eval/test/predictions.csv [--predictions ...] --out runs/exam-eval

Input: ``predictions.csv`` written by ``training.evaluate`` on EyePACS-layout data (file names
``<patient>_<left|right>``, ``label`` a DR grade name, ``p_<grade>`` calibrated probabilities).
Each image gets the served referral (the checkpoint's operating points) through
``retina.assessment.grade``; each patient's two images are one exam through
``retina.exam.assess_exam``. Reported, with the truth "referable = grade >= 2":

* per eye: sensitivity / specificity of "refer or urgent" (one photo per eye: the per-eye rule
  reduces to the image's own answer);
* per patient: the served rule (the most urgent eye) against the alternative of averaging the
  two eyes' P(grade >= 2) and thresholding at the same operating point, and against using one
  eye only (the right), which is what a per-image reading without an exam amounts to.

What it cannot measure: the within-eye rule (max over an eye's photos), since EyePACS has one
photo per eye; and ungradable eyes, since ``training.evaluate`` scores without the image gate.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retina.assessment import grade
from retina.checkpoint import meta_from_dict, read
from retina.exam import ExamItem, assess_exam
from retina.labels import DR_GRADES, p_grade_at_least
from retina.referral import ReferralThresholds, threshold_for
from training.cli import setup_logging

log = logging.getLogger("training.evaluate.exams")
_NAME = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$")
REFER = ("refer", "urgent")


def read_rows(paths: Sequence[Path]) -> list[tuple[str, str, int, np.ndarray]]:
    """``(dataset/patient, eye, grade, probabilities (5,))`` of every image named ``<patient>_<eye>``."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                m = _NAME.match(Path(row["path"]).stem)
                if m is None:
                    continue
                probs = np.asarray([float(row[f"p_{c}"]) for c in DR_GRADES])
                rows.append((f"{path}:{m['patient']}", m["eye"], DR_GRADES.index(row["label"]), probs))
    return rows


def _rates(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    pos, neg = truth.sum(), (~truth).sum()
    return {
        "n": int(len(truth)),
        "positives": int(pos),
        "sensitivity": round(float((pred & truth).sum() / pos), 4) if pos else None,
        "specificity": round(float((~pred & ~truth).sum() / neg), 4) if neg else None,
    }


def evaluate_exams(rows: list[tuple[str, str, int, np.ndarray]], meta: Any) -> dict[str, Any]:
    """Per-eye and per-patient figures (see the module docstring) of patients with both eyes."""
    thresholds = ReferralThresholds()
    t_refer = threshold_for("referral_fundus_refer", thresholds, meta)
    by_patient: dict[str, dict[str, tuple[int, np.ndarray]]] = defaultdict(dict)
    for patient, eye, g, probs in rows:
        by_patient[patient][eye] = (g, probs)
    both = {p: eyes for p, eyes in by_patient.items() if set(eyes) == {"left", "right"}}
    eye_pred, eye_true, rule, mean_rule, right_only, truth = [], [], [], [], [], []
    for eyes in both.values():
        items = []
        for i, eye in enumerate(("right", "left")):
            g, probs = eyes[eye]
            a = grade("model", meta, probs, 0.0, thresholds)
            items.append(ExamItem(i, None, eye, "filename", "image", a))  # type: ignore[arg-type]
            eye_pred.append((a.referral or {}).get("level") in REFER)
            eye_true.append(g >= 2)
        exam = assess_exam(items)
        rule.append(exam.patient["level"] in REFER)
        p_ref = [float(p_grade_at_least(eyes[e][1], 2)) for e in ("right", "left")]
        mean_rule.append(float(np.mean(p_ref)) >= t_refer)
        right_only.append(eye_pred[-2])
        truth.append(eyes["right"][0] >= 2 or eyes["left"][0] >= 2)
    t = np.asarray(truth)
    return {
        "patients_with_both_eyes": len(both),
        "images": len(rows),
        "refer_threshold": t_refer,
        "per_eye": _rates(np.asarray(eye_pred), np.asarray(eye_true)),
        "per_patient_most_urgent_eye": _rates(np.asarray(rule), t),
        "per_patient_mean_of_eyes": _rates(np.asarray(mean_rule), t),
        "per_patient_right_eye_only": _rates(np.asarray(right_only), t),
        "patients_with_exactly_one_referable_eye": int(
            sum(1 for e in both.values() if (e["right"][0] >= 2) != (e["left"][0] >= 2))
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate.exams", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--predictions", type=Path, action="append", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    setup_logging()
    meta = meta_from_dict(read(args.checkpoint))
    result = evaluate_exams(read_rows(args.predictions), meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "exam_eval.json").write_text(json.dumps(result, indent=2))
    log.info("%s", json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
