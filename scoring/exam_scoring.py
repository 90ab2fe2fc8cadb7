"""An exam scored in-process: files -> eyes -> the batch scorer's assessments -> ``retina.exam``'s answer.

The same steps as ``POST /predict/exam`` without HTTP, audit or micro-batching (what
``scoring.pacs`` runs next to a PACS): each file gets its eye (``retina.laterality``), a photo or
B-scan goes through :meth:`scoring.batch.BatchScorer.assess` (the service's gate, model,
calibration and referral), a multi-frame OCT DICOM through every B-scan and
``retina.volume.assess_volume`` with the service's defaults (rule ``mean``, at least half the
B-scans gradable), and ``retina.exam.assess_exam`` decides each eye and the patient.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from retina.assessment import Refusal
from retina.dicom import is_dicom, number_of_frames, open_frames
from retina.errors import ImageDecodeError, public_code
from retina.exam import ExamAssessment, ExamItem, assess_exam
from retina.gate import GateResult
from retina.laterality import resolve
from retina.preprocessing import pil_to_uint8_tensor, prepare
from retina.volume import assess_volume
from scoring.batch import BatchScorer

logger = logging.getLogger(__name__)

# The service's defaults (backend/app/core/config.py): RETINA_VOLUME_RULE, _MIN_GRADABLE_*, _MAX_VOLUME_*.
VOLUME_RULE = "mean"
VOLUME_MIN_FRAMES = 1
VOLUME_MIN_FRACTION = 0.5
MAX_VOLUME_FRAMES = 256
MAX_VOLUME_PIXELS = 150_000_000


@dataclass(frozen=True)
class ExamFile:
    """One file of an exam: its position, a name (may tell the eye), its bytes, an operator's eye (or None)."""

    index: int
    name: str | None
    data: bytes
    laterality: str | None = None


def _volume(scorer: BatchScorer, f: ExamFile, eye: str, source: str) -> ExamItem:
    """Every B-scan through the gate and the OCT model, then the volume's answer."""
    served = scorer.by_task.get("oct")
    if served is None:
        return ExamItem(f.index, f.name, eye, source, "volume", None, ("invalid_parameter", "no OCT model loaded"))  # type: ignore[arg-type]
    frames = open_frames(f.data, MAX_VOLUME_PIXELS, MAX_VOLUME_FRAMES)
    verdicts: list[GateResult | None] = []
    probs: dict[int, np.ndarray] = {}
    for i in range(frames.n_frames):
        img = frames.frame(i)
        verdict = scorer.gate.assess(img)
        verdicts.append(verdict)
        if verdict.modality == "oct" and verdict.gradable:
            probs[i] = scorer.probabilities(served, pil_to_uint8_tensor(prepare(img, served.meta.preprocess)))
    result = assess_volume(
        served.id,
        served.meta,
        verdicts,
        probs,
        scorer.config.thresholds,
        rule=VOLUME_RULE,
        min_frames=VOLUME_MIN_FRAMES,
        min_fraction=VOLUME_MIN_FRACTION,
    )
    return ExamItem(f.index, f.name, eye, source, "volume", result.volume, None, result.to_dict())  # type: ignore[arg-type]


def score_item(scorer: BatchScorer, f: ExamFile, eye: str, source: str) -> ExamItem:
    """One file of the exam; a refusal or an undecodable file is the item's error (not gradable)."""
    try:
        if is_dicom(f.data) and number_of_frames(f.data) > 1:
            return _volume(scorer, f, eye, source)
        _, _, result = scorer.assess(f.data)
    except ImageDecodeError as e:
        return ExamItem(f.index, f.name, eye, source, "image", None, (public_code(e), e.detail))  # type: ignore[arg-type]
    if isinstance(result, Refusal):
        return ExamItem(f.index, f.name, eye, source, "image", None, (result.code, result.detail))  # type: ignore[arg-type]
    return ExamItem(f.index, f.name, eye, source, "image", result)  # type: ignore[arg-type]


@torch.inference_mode()
def score_exam(scorer: BatchScorer, files: Sequence[ExamFile]) -> tuple[ExamAssessment | None, list[int]]:
    """``(exam, indices without an eye)``; files without an eye are left out (the exam is None if all are)."""
    items: list[ExamItem] = []
    missing: list[int] = []
    for f in files:
        eye, source = resolve(f.laterality, f.data, f.name, is_dicom(f.data))
        if eye is None:
            missing.append(f.index)
            continue
        items.append(score_item(scorer, f, eye, source or ""))
    return (assess_exam(items) if items else None), missing
