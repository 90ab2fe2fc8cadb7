"""One OCT volume's assessment: per-B-scan results -> one volume answer, and the B-scans that decided it.

A clinic decides per volume (De Fauw et al. 2018), so the service scores every B-scan with the
same gate and model as ``/predict`` and then aggregates:

* B-scans the gate finds ungradable, or not OCT at all, are counted and skipped;
* fewer than ``max(min_frames, ceil(min_fraction * n))`` gradable B-scans -> the volume is ungradable;
* otherwise the gradable B-scans' calibrated probabilities ``(n, C)`` are aggregated by a rule of
  :data:`RULES` into volume probabilities ``(C,)``, which go through the same :func:`retina.assessment.grade`
  (referral at the model's operating points, consistent label) as one image's;
* the deciding B-scans are the gradable ones with the highest probability of the volume label.

Rules (each a per-class score, renormalised to sum 1 so the referral thresholds read probabilities):

* ``mean``: the mean over B-scans (every B-scan counts equally);
* ``top3_mean``: per class, the mean of its 3 highest B-scan probabilities (a lesion seen on a few
  B-scans of a mostly normal volume still counts);
* ``max``: per class, the highest B-scan probability;
* ``noisy_or``: per class, ``1 - prod(1 - p_i)`` (the class is present if any B-scan shows it);
* ``vote``: the share of B-scans whose label is the class (Srinivasan et al. 2014).

Which rule is served (``RETINA_VOLUME_RULE``) was chosen on a validation part of patient volumes
built from Kermany scans (``training/evaluate/volumes.py``, report in ``runs/volume/report.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from retina.assessment import Assessment, grade, ungradable
from retina.checkpoint import CheckpointMeta
from retina.gate import GateResult
from retina.referral import Thresholds

TOP_K = 3


def _renorm(scores: np.ndarray) -> np.ndarray:
    total = float(scores.sum())
    return scores / total if total > 0 else np.full_like(scores, 1.0 / len(scores))


def _mean(p: np.ndarray) -> np.ndarray:
    return _renorm(p.mean(axis=0))


def _top_mean(p: np.ndarray) -> np.ndarray:
    k = min(TOP_K, len(p))
    return _renorm(np.sort(p, axis=0)[-k:].mean(axis=0))


def _max(p: np.ndarray) -> np.ndarray:
    return _renorm(p.max(axis=0))


def _noisy_or(p: np.ndarray) -> np.ndarray:
    # In log space: 1 - prod(1 - p) underflows to exactly 1 for a long volume of confident B-scans.
    log_none = np.log1p(-np.clip(p, 0.0, 1.0 - 1e-12)).sum(axis=0)
    return _renorm(-np.expm1(log_none))


def _vote(p: np.ndarray) -> np.ndarray:
    return np.bincount(p.argmax(axis=1), minlength=p.shape[1]).astype(np.float64) / len(p)


RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": _mean,
    "top3_mean": _top_mean,
    "max": _max,
    "noisy_or": _noisy_or,
    "vote": _vote,
}
RULE_TEXT = {
    "mean": "mean of the gradable B-scans' probabilities",
    "top3_mean": f"per class, mean of the {TOP_K} highest B-scan probabilities, renormalised",
    "max": "per class, the highest B-scan probability, renormalised",
    "noisy_or": "per class, noisy-OR 1 - prod(1 - p) over B-scans, renormalised",
    "vote": "share of B-scans voting for each class",
}


def aggregate(probs: np.ndarray, rule: str) -> np.ndarray:
    """Gradable B-scans' probabilities ``(n, C)``, n >= 1 -> volume probabilities ``(C,)`` summing to 1."""
    if rule not in RULES:
        raise ValueError(f"unknown volume rule {rule!r}; one of {', '.join(RULES)}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError("aggregate needs probabilities of shape (n >= 1, C)")
    return RULES[rule](probs)


def deciding_frames(indices: Sequence[int], probs: np.ndarray, label_index: int, k: int = TOP_K) -> list[int]:
    """The (at most ``k``) frame indices with the highest probability of the volume label, highest first."""
    order = np.argsort(-np.asarray(probs)[:, label_index], kind="stable")[:k]
    return [int(indices[i]) for i in order]


def needed_gradable(n_frames: int, min_frames: int, min_fraction: float) -> int:
    """How many gradable B-scans a volume of ``n_frames`` needs to be graded."""
    return max(int(min_frames), math.ceil(float(min_fraction) * n_frames))


FrameStatus = Literal["graded", "ungradable", "not_oct"]


@dataclass(frozen=True)
class FrameResult:
    """One B-scan of a volume: ``graded`` (with its own probabilities and label), ``ungradable`` or ``not_oct``."""

    index: int
    status: FrameStatus
    label: str | None
    probabilities: Mapping[str, float] | None
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "status": self.status,
            "label": self.label,
            "probabilities": None if self.probabilities is None else dict(self.probabilities),
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class VolumeAssessment:
    """A whole volume's answer; ``volume`` reads like one image's :class:`Assessment` (gate None).

    Attributes:
        volume: label, confidence, probabilities and referral of the volume (``gradable`` False: too few
            gradable B-scans, ``referral.level`` ``ungradable``).
        rule: the aggregation rule (a key of :data:`RULES`).
        n_frames, n_graded, n_ungradable, n_not_oct: B-scan counts (graded + ungradable + not_oct = n_frames).
        needed: the fewest graded B-scans for a volume answer.
        deciding: frame indices (0-based) that drove the label, highest probability first; empty when ungradable.
        frames: every B-scan's result, in frame order.
    """

    volume: Assessment
    rule: str
    n_frames: int
    n_graded: int
    n_ungradable: int
    n_not_oct: int
    needed: int
    deciding: tuple[int, ...]
    frames: tuple[FrameResult, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain types: the ``VolumeResponse`` body (the audit row reads ``volume``)."""
        body = self.volume.to_dict()
        body.pop("gate")
        return {
            **body,
            "rule": self.rule,
            "rule_text": RULE_TEXT[self.rule],
            "n_frames": self.n_frames,
            "n_graded": self.n_graded,
            "n_ungradable": self.n_ungradable,
            "n_not_oct": self.n_not_oct,
            "needed_graded": self.needed,
            "deciding_frames": list(self.deciding),
            "frames": [f.to_dict() for f in self.frames],
        }


def frame_status(verdict: GateResult | None, task: str) -> FrameStatus:
    """``graded`` when the gate is off or saw a gradable image of ``task``; else why it is skipped."""
    if verdict is None:
        return "graded"
    if verdict.modality != task:
        return "not_oct"
    return "graded" if verdict.gradable else "ungradable"


def assess_volume(
    model_id: str,
    meta: CheckpointMeta,
    verdicts: Sequence[GateResult | None],
    probs: Mapping[int, np.ndarray],
    thresholds: Thresholds,
    *,
    rule: str,
    min_frames: int = 1,
    min_fraction: float = 0.5,
    inference_ms: float = 0.0,
) -> VolumeAssessment:
    """Per-frame gate verdicts (one per frame) and the graded frames' probabilities ``{index: (C,)}`` -> the answer.

    ``probs`` must hold exactly the frames whose :func:`frame_status` is ``graded``.
    """
    n = len(verdicts)
    statuses = [frame_status(v, meta.task) for v in verdicts]
    if set(probs) != {i for i, s in enumerate(statuses) if s == "graded"}:
        raise ValueError("probabilities must be given for exactly the graded frames")
    frames: list[FrameResult] = []
    graded_idx: list[int] = []
    for i, (verdict, status) in enumerate(zip(verdicts, statuses, strict=True)):
        if status == "graded":
            one = grade(model_id, meta, probs[i], 0.0, thresholds, verdict)
            frames.append(FrameResult(i, status, one.label, one.probabilities))
            graded_idx.append(i)
        else:
            assert verdict is not None
            why = verdict.reasons if status == "ungradable" else (f"the image gate saw {verdict.modality}, not OCT",)
            frames.append(FrameResult(i, status, None, None, tuple(why)))
    counts = {s: sum(f.status == s for f in frames) for s in ("graded", "ungradable", "not_oct")}
    need = needed_gradable(n, min_frames, min_fraction)
    common: dict[str, Any] = {"rule": rule, "n_frames": n, "n_graded": counts["graded"]}
    common |= {"n_ungradable": counts["ungradable"], "n_not_oct": counts["not_oct"], "needed": need}
    common["frames"] = tuple(frames)
    if counts["graded"] < need:
        seen = sorted({r for f in frames for r in f.reasons})
        reasons = [f"only {counts['graded']} of {n} B-scans are gradable; a volume answer needs {need}", *seen[:3]]
        volume = ungradable(model_id, meta, None, reasons, inference_ms)
        return VolumeAssessment(volume=volume, deciding=(), **common)
    stacked = np.stack([probs[i] for i in graded_idx])
    volume = grade(model_id, meta, aggregate(stacked, rule), inference_ms, thresholds, None)
    assert volume.label_index is not None
    deciding = tuple(deciding_frames(graded_idx, stacked, volume.label_index))
    return VolumeAssessment(volume=volume, deciding=deciding, **common)
