"""Image gate: is an upload an OCT B-scan, a colour fundus photo, or neither, and is it gradable?

Runs before every prediction, because a classifier labels anything: a portrait would
otherwise come back "referable DR". Two questions, asked in turn:

1. **Is it a retina at all, at any quality?** A small CNN (``gatenet`` in :mod:`retina.models`,
   a self-describing checkpoint ``models/image-gate.pt`` with its own :class:`PreprocessSpec`:
   the whole image letterboxed to 64 px, colour kept) scores ``oct`` / ``fundus`` / ``other``.
   Its positives are every real retinal image (EyePACS, IDRiD, ODIR; Kermany OCT) *and* copies
   of them as a poor capture gives them (dark, over-exposed, small pupil, dust, cut field,
   off-centre, blurred, lesion-heavy), so a dark or diseased retina is a retina. An image is a
   modality when that modality's probability reaches the checkpoint's acceptance threshold
   (chosen on grouped cross-validation for <= 1 % false acceptance of photographs of unseen
   classes). A fundus the CNN doubts is still an (ungradable) fundus when it has a fundus
   photo's round, black-rimmed field (:func:`retina.quality.looks_like_fundus_field`,
   above a small probability floor): "ungradable", never "not a retinal image".
2. **Is it gradable?** For a fundus photo, the learned quality grade (Good / Usable / Reject,
   :class:`retina.quality.QualityGrader`, fitted on EyeQ's grades) and/or the hand-set limits
   on plain measures (retina brightness, over-exposure, sharpness, retina in frame), whichever
   the fit found closer to EyeQ (``gradable_rule`` in the checkpoint); for OCT the limits on
   layer-band contrast and blankness. Plain words, so ``/predict`` shows why.

``python -m training.gate`` trains the CNN, fits thresholds, limits and the grade, and writes the report.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from retina import checkpoint
from retina.engine import load_engine
from retina.preprocessing import PreprocessSpec, pil_to_uint8_tensor, prepare, tail_fn
from retina.quality import (  # noqa: F401 - re-exported: the gate's public names before quality had its own module
    GRADES,
    QUALITY_DIRECTION,
    QUALITY_MEASURES,
    QUALITY_REASONS,
    THUMB,
    QualityGrader,
    _ellipse_iou,
    _percentile_u8_as_unit,
    fundus_field,
    fundus_quality,
    gate_thumb,
    looks_like_fundus_field,
    quality,
    quality_reasons,
    thumbnail_u8,
)

Modality = Literal["oct", "fundus", "other"]
MODALITIES: tuple[str, ...] = ("oct", "fundus")
GATE_CLASSES: tuple[str, ...] = ("oct", "fundus", "other")
GATE_TASK = "gate"

GATE_FILE = "image-gate.pt"

# The CNN's input: the whole upload letterboxed on black (OCT scans are wide, photos of any
# shape), colour kept. 64 px is enough to tell a retina from a photograph and costs ~1 ms.
GATE_SPEC = PreprocessSpec(size=64, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), square="pad")
MIN_SIDE = 32  # px: smaller uploads (icons, thumbnails) cannot be graded
# Grey levels: an upload whose small copy spans no more than this in every band is one flat tone
# (a blank frame, a failed export). No retinal image is: both kinds have a black surround or
# vitreous next to bright tissue. Checked before the CNN, which called some flat grey fields an
# ungradable fundus (so an OCT upload got "wrong modality" instead of "not a retinal image").
FLAT_RANGE = 8
GRADABLE_RULES: tuple[str, ...] = ("limits", "grade", "both")


@dataclass(frozen=True)
class GateResult:
    """What the gate decided about one image.

    Attributes:
        modality: ``oct``, ``fundus`` or ``other`` (not a retinal image).
        probabilities: the CNN's softmax over ``oct``, ``fundus``, ``other``.
        gradable: False when the image is the modality but unusable; always False for ``other``.
        reasons: why it is ungradable (or not retinal), in words; empty when gradable.
        quality: the quality measures of the detected modality.
        thresholds: the acceptance threshold of each modality (probability).
        quality_grade: the learned grade of a fundus photo (``Good``, ``Usable``, ``Reject``); None otherwise.
        quality_grade_probabilities: its probabilities over :data:`retina.quality.GRADES`.
    """

    modality: Modality
    probabilities: dict[str, float]
    gradable: bool
    reasons: list[str] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    quality_grade: str | None = None
    quality_grade_probabilities: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "gradable": self.gradable,
            "reasons": list(self.reasons),
            "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
            "thresholds": {k: round(v, 4) for k, v in self.thresholds.items()},
            "quality": {k: round(v, 4) for k, v in self.quality.items()},
            "quality_grade": self.quality_grade,
            "quality_grade_probabilities": {k: round(v, 4) for k, v in self.quality_grade_probabilities.items()},
        }


# An image whose neighbouring pixels (128-px copy, grey) correlate below this is noise-like: every
# real retinal image here correlates >= 0.89 (818 OCT scans, 7,129 fundus photos of four sets),
# ImageNet photos >= 0.61, uniform noise ~0. The under-trained v2.0 CNN called noise a fundus photo.
NOISE_CORRELATION = 0.5
# Channel spread (grey levels) up to which a pixel has no colour, and the share of pixels above it
# that a grey image may have: a grey image is not a colour fundus photo (moon: 0 pixels above).
GREY_SPREAD = 4
GREY_SHARE = 0.01


def _neighbour_correlation(img: Image.Image) -> float:
    """Pearson correlation of horizontally adjacent grey levels of a small copy; 1.0 for a constant image."""
    g = np.asarray(img.convert("L"), dtype=np.float32)
    x, y = g[:, :-1].ravel(), g[:, 1:].ravel()
    if x.std() == 0 or y.std() == 0:
        return 1.0
    return float(np.corrcoef(x, y)[0, 1])


def _is_grey(img: Image.Image) -> bool:
    """True when the small copy has no colour: at most 1 % of its pixels spread more than :data:`GREY_SPREAD`.

    A share, not every pixel: a grey photograph with a coloured speck, a caption or a few tinted
    pixels is still grey. Every real fundus photo here has >= 10 % of its field at a spread of 6 or
    more (the darkest, a near-black EyePACS photo; the next darkest 14), so none is called grey.
    """
    if img.mode == "L":
        return True
    a = np.asarray(img.convert("RGB"))
    # Pairwise channel maxima, not ``max(axis=2)``: numpy's reduction over a 3-long last axis cost
    # 0.8 ms of the gate's ~3 ms on a 128-px copy; this costs ~0.05 ms.
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # uint8: max >= min, no wrap
    return np.count_nonzero(spread > GREY_SPREAD) <= GREY_SHARE * spread.size


def _tone_range(img: Image.Image) -> int:
    """Largest ``max - min`` over the bands of an ``L`` or ``RGB`` image, in grey levels."""
    ext = img.getextrema()
    bands = ext if isinstance(ext[0], tuple) else (ext,)
    return max(int(hi) - int(lo) for lo, hi in bands)  # type: ignore[misc]


def screen(img: Image.Image, thumb: Image.Image) -> str | None:
    """Why an upload is refused before the CNN (too small, blank, noise-like), or None.

    ``img`` is the decoded upload and ``thumb`` its :func:`gate_thumb` copy. The fit
    (``training.gate``) applies the same screen, so its out-of-fold figures are the served gate's.
    """
    if min(img.size) < MIN_SIDE:
        return f"the image is {img.size[0]}x{img.size[1]} px, too small to be a retinal image"
    if _tone_range(thumb) <= FLAT_RANGE:
        return "the image is blank (one flat tone), not an OCT B-scan or a fundus photo"
    if _neighbour_correlation(thumb) < NOISE_CORRELATION:
        return "the image is noise-like (no structure between neighbouring pixels), not a retinal image"
    return None


def gate_view(img: Image.Image, spec: PreprocessSpec = GATE_SPEC) -> torch.Tensor:
    """The CNN's prepared input for one decoded image: ``uint8 (3, S, S)``, from :func:`gate_thumb`."""
    return pil_to_uint8_tensor(prepare(gate_thumb(img), spec))


def _fused(model: nn.Module) -> nn.Module:
    """An inference copy of ``gatenet`` with each Conv-BN-ReLU fused into one op (same outputs).

    The network is so small that per-op overhead is most of its cost; fusing the batch norms
    into the convolutions (torch.ao's ``fuse_modules``, eval mode) cuts a third of the ops.
    The unfused model stays in :attr:`ImageGate.model`: it is what is saved and trained.
    """
    feats = getattr(model, "features", None)
    if not isinstance(feats, nn.Sequential):
        return model
    groups = [
        [str(i), str(i + 1), str(i + 2)]
        for i in range(len(feats) - 2)
        if isinstance(feats[i], nn.Conv2d)
        and isinstance(feats[i + 1], nn.BatchNorm2d)
        and isinstance(feats[i + 2], nn.ReLU)
    ]
    fast = copy.deepcopy(model).eval()
    fast.features = torch.ao.quantization.fuse_modules(fast.features, groups)
    return fast


class ImageGate:
    """The fitted gate: modality CNN, acceptance thresholds and quality limits.

    Args:
        model: ``gatenet`` in eval mode; ``(N, 3, S, S)`` normalised input -> ``(N, 3)`` logits.
        spec: its preprocessing (:data:`GATE_SPEC` for the shipped one).
        thresholds: modality -> smallest accepted probability.
        quality_limits: modality -> measure -> limit (direction in :data:`QUALITY_DIRECTION`).
        fitted_on: provenance and measured figures, for ``/models`` and the report.
        grader: the learned fundus quality grade (None: limits only).
        gradable_rule: for fundus, ``limits`` (hand-set limits decide), ``grade`` (the learned grade
            decides: Reject is ungradable) or ``both`` (either one refuses). OCT always uses limits.
        field_floor: smallest P(fundus) at which an image the CNN doubts is still an ungradable
            fundus when it has a fundus field (:func:`looks_like_fundus_field`); None: no such rule.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: PreprocessSpec,
        thresholds: dict[str, float],
        quality_limits: dict[str, dict[str, float]],
        fitted_on: dict[str, Any] | None = None,
        version: str = "0.0.0",
        *,
        grader: QualityGrader | None = None,
        gradable_rule: str = "limits",
        field_floor: float | None = None,
    ) -> None:
        if gradable_rule not in GRADABLE_RULES or (gradable_rule != "limits" and grader is None):
            raise ValueError(f"gradable_rule {gradable_rule!r} needs one of {GRADABLE_RULES} (and a grader)")
        self.model = model.eval()
        self.spec = spec
        self.thresholds = {m: float(thresholds[m]) for m in MODALITIES}
        self.quality_limits = quality_limits
        self.grader = grader
        self.gradable_rule = gradable_rule
        self.field_floor = field_floor
        self.fitted_on = fitted_on or {}
        self.version = version
        self._tail = tail_fn(spec)  # tail(spec)'s kernels without the Compose's dispatch (~0.5 ms a call)
        self._fast = _fused(self.model)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self._fast
        self.engine = "torch"

    def use_engine(self, name: str, path: str | Path, cache_dir: str | Path | None = None) -> str:
        """Run the CNN on ``retina.engine``'s ``name`` (``auto``: ONNX Runtime fp32 when it passes parity).

        The network is a few hundred microseconds of arithmetic, so torch's per-op dispatch is
        most of its cost: ONNX Runtime runs the same fused graph in about a third of the time
        (measured in ``benchmarks/serve_benchmark.py``'s stage table). Int8 is not offered for the
        gate: its thresholds were chosen on fp32 probabilities. Returns the engine's name.
        """
        # Int8 requests run the gate on fp32 ONNX Runtime (its thresholds are fp32; OpenVINO fp32 is slower here).
        name = "onnxruntime" if name in ("auto", "onnxruntime-int8", "openvino-int8") else name
        meta = checkpoint.meta_from_dict(checkpoint.read(path))
        engine, info = load_engine(name, self._fast, meta, path, threads=1, cache_dir=cache_dir)
        self._forward, self.engine = engine, info.name
        return info.name

    # ------------------------------------------------------------------ scoring
    def probabilities(self, views: torch.Tensor) -> np.ndarray:
        """``uint8 (N, 3, S, S)`` gate views -> softmax ``float (N, 3)`` over :data:`GATE_CLASSES`."""
        with torch.inference_mode():
            logits = self._forward(self._tail(views))
        return torch.softmax(logits.float(), dim=1).numpy()

    def decide(self, probs: np.ndarray) -> str:
        """Modality for one probability row ``(3,)``: the likelier retinal kind if it reaches its threshold."""
        best = max(MODALITIES, key=lambda m: probs[GATE_CLASSES.index(m)])
        return best if probs[GATE_CLASSES.index(best)] >= self.thresholds[best] else "other"

    def _field_rescue(self, thumb: Image.Image, p: np.ndarray) -> list[str] | None:
        """Reasons for calling a doubted image an ungradable fundus, or None when it is not one.

        The CNN's "other" is overruled only with a fundus photo's own look (a round, black-rimmed
        field with some detail, in colour) and P(fundus) at or above :attr:`field_floor`: a poor or
        unusual retina should be "ungradable", never "not a retinal image".
        """
        p_fundus = float(p[GATE_CLASSES.index("fundus")])
        if self.field_floor is None or p_fundus < self.field_floor or _is_grey(thumb):
            return None
        if not looks_like_fundus_field(fundus_field(thumb)):
            return None
        return [
            f"the image check is unsure this is a fundus photo (P(fundus) {p_fundus:.2f}, needs "
            f"{self.thresholds['fundus']:.2f}), but it has a fundus photo's round field: retake it"
        ]

    def _fundus_quality(self, thumb: Image.Image) -> tuple[dict[str, float], list[str], str | None, dict[str, float]]:
        """Measures, reasons, learned grade and its probabilities of one fundus photo's small copy."""
        q, feats = fundus_quality(thumb)
        limit_reasons = quality_reasons(q, self.quality_limits.get("fundus", {}))
        if self.grader is None:
            return q, limit_reasons, None, {}
        probs = self.grader.probabilities(feats)
        grade = self.grader.grade(probs)
        pd = {g: float(v) for g, v in zip(GRADES, probs, strict=True)}
        grade_reasons = (
            [f"the learned quality grade is Reject (P(Reject) {probs[2]:.2f}, limit {self.grader.reject_at:.2f})"]
            if grade == "Reject"
            else []
        )
        if self.gradable_rule == "grade":
            # The limits stay as words when the grade refuses too: they say what is wrong.
            reasons = grade_reasons + (limit_reasons if grade_reasons else [])
        elif self.gradable_rule == "both":
            reasons = grade_reasons + limit_reasons
        else:
            reasons = limit_reasons
        return q, reasons, grade, pd

    def _judge(self, thumb: Image.Image, p: np.ndarray) -> GateResult:
        """The verdict on one (not flat, not tiny) image from its small copy and CNN probabilities ``(3,)``."""
        pd = {c: float(v) for c, v in zip(GATE_CLASSES, p, strict=True)}
        modality = self.decide(p)
        rescue: list[str] = []
        if modality == "fundus" and _is_grey(thumb):
            # A colour fundus photo has colour; a grey image is an OCT scan or not retinal.
            no_fundus = p.copy()
            no_fundus[GATE_CLASSES.index("fundus")] = 0.0
            if self.decide(no_fundus) != "oct":
                why = "it has no colour, so it is not a colour fundus photo, and it does not look like an OCT B-scan"
                return GateResult("other", pd, False, [why], {}, self.thresholds)
            modality = "oct"
        if modality == "other":
            found = self._field_rescue(thumb, p)
            if found is None:
                why = "it does not look like an OCT B-scan or a fundus photo"
                return GateResult("other", pd, False, [why], {}, self.thresholds)
            modality, rescue = "fundus", found
        if modality == "oct":
            q = quality(thumb, "oct")
            reasons = quality_reasons(q, self.quality_limits.get("oct", {}))
            return GateResult("oct", pd, not reasons, reasons, q, self.thresholds)
        q, reasons, grade, gp = self._fundus_quality(thumb)
        reasons = rescue + reasons
        return GateResult("fundus", pd, not reasons, reasons, q, self.thresholds, grade, gp)

    def assess_many(self, images: Sequence[Image.Image]) -> list[GateResult]:
        """Decide modality and gradability of several decoded images in one forward pass."""
        results: list[GateResult | None] = [None] * len(images)
        thumbs: dict[int, Image.Image] = {}
        for i, img in enumerate(images):
            # One small copy per upload serves the screen, the CNN's view and the quality measures
            # (none for a tiny one: it is refused by its size alone).
            thumb = gate_thumb(img) if min(img.size) >= MIN_SIDE else img
            if (why := screen(img, thumb)) is not None:
                results[i] = GateResult("other", {}, False, [why], {}, self.thresholds)
            else:
                thumbs[i] = thumb
        todo = list(thumbs)
        if todo:
            probs = self.probabilities(torch.stack([gate_view(thumbs[i], self.spec) for i in todo]))
            for i, p in zip(todo, probs, strict=True):
                results[i] = self._judge(thumbs[i], p)
        return [r for r in results if r is not None]

    def assess(self, img: Image.Image) -> GateResult:
        """Decide modality and gradability of one decoded image."""
        return self.assess_many([img])[0]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, model_args: dict[str, Any], metrics: dict[str, Any] | None = None) -> Path:
        return checkpoint.save(
            path,
            self.model,
            arch="gatenet",
            model_args=model_args,
            task=GATE_TASK,
            class_names=list(GATE_CLASSES),
            preprocess=self.spec,
            metrics=metrics or {},
            version=self.version,
            extra={
                "thresholds": self.thresholds,
                "quality_limits": self.quality_limits,
                "fitted_on": self.fitted_on,
                "quality_grader": self.grader.to_dict() if self.grader is not None else None,
                "gradable_rule": self.gradable_rule,
                "field_floor": self.field_floor,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> ImageGate:
        """Read a gate checkpoint; ``ValueError`` when it is not one (wrong task, classes or limits)."""
        model, meta = checkpoint.load(path)
        if meta.task != GATE_TASK or tuple(meta.class_names) != GATE_CLASSES:
            raise ValueError(f"{path} is not an image-gate checkpoint (task {meta.task!r}, classes {meta.class_names})")
        extra = meta.extra
        thresholds = extra.get("thresholds") or {}
        if set(thresholds) != set(MODALITIES) or not all(0.0 < float(v) <= 1.0 for v in thresholds.values()):
            raise ValueError(f"{path} needs an acceptance threshold in (0, 1] for each of {list(MODALITIES)}")
        limits = extra.get("quality_limits") or {}
        for m, lim in limits.items():
            unknown = set(lim) - set(QUALITY_MEASURES.get(m, ()))
            if m not in MODALITIES or unknown:
                raise ValueError(f"{path}: unknown quality limits {sorted(unknown) or m!r}")
        grader = QualityGrader.from_dict(extra["quality_grader"]) if extra.get("quality_grader") else None
        floor = extra.get("field_floor")
        return cls(
            model,
            meta.preprocess,
            thresholds,
            limits,
            extra.get("fitted_on") or {},
            meta.version,
            grader=grader,
            gradable_rule=str(extra.get("gradable_rule") or "limits"),
            field_floor=float(floor) if floor is not None else None,
        )
