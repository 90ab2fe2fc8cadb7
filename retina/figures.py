"""The headline figures of a shipped model: one definition read by the model card, /models, the UI and the PDF.

``training.ship.card`` writes each evaluation's headline numbers (from the ``metrics.json`` that
``training.evaluate`` or ``training.cv`` measured on the shipped file) into the checkpoint's
``card["evaluations"]``, and renders the markdown card from the same ``metrics.json``. Everything
that shows a model's figures reads them through :func:`model_figures`, and prints each one with
:func:`figure_text`, so the card, ``GET /models``, the UI and the PDF report carry the same numbers
with the same rounding. The checkpoint's ``metrics`` block is the training run's own record
(the float32 weights before int8 storage, the training split's pooled sets); it is used only
when a checkpoint has no card (test and experimental checkpoints).

Pure Python on plain dicts: no torch, so the backend, ``training.ship.card`` and tests share it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retina.formatting import fmt_ci

__all__ = ["HEADLINE", "Evaluation", "Figure", "figure_text", "model_figures", "split_kind"]

# (key in card["evaluations"][name], label). ECE is labelled by :func:`_ece_label`: every shipped
# evaluation scores temperature-scaled probabilities (training.evaluate and training.cv apply it).
HEADLINE: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "Macro F1"),
    ("referable_roc_auc", "Referable-DR ROC AUC"),
    ("referable_sensitivity_at_90_specificity", "Referable-DR sensitivity at 90% specificity"),
    ("any_dr_roc_auc", "Any-DR ROC AUC"),
    ("ece", "ECE"),
)
# Keys of the training-run metrics layout (training/evaluate/metrics.py) -> the card's keys, for the fallback.
_TRAINING_KEYS: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy",),
    "balanced_accuracy": ("balanced_accuracy",),
    "macro_f1": ("macro_f1",),
    "referable_roc_auc": ("referable", "roc_auc"),
    "referable_sensitivity_at_90_specificity": ("referable", "sensitivity_at_90_specificity"),
    "any_dr_roc_auc": ("any_dr", "roc_auc"),
    "ece": ("ece",),
}
_TRAINING_SPLITS = ("cv", "test", "val", "validation", "holdout")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def figure_text(value: Any, ci95: Any = None) -> str:
    """How every figure is printed: ``0.921 [0.900, 0.940]`` (3 decimals, 95% interval), ``n/a`` when missing.

    ``retina.formatting.fmt_ci`` is the one formatter; a figure that is not a finite number is ``n/a``.
    """
    return fmt_ci(value, ci95) if _finite(value) else "n/a"


def split_kind(name: str) -> str:
    """What kind of set an evaluation named ``name`` is: ``cv``, ``test``, ``validation`` or ``held-out``."""
    low = name.lower()
    if low == "cv":
        return "cv"
    if low.startswith("val"):
        return "validation"
    if low.startswith("test"):
        return "test"
    return "held-out"


_KIND_NAMES = {
    "cv": "Cross-validation, out of fold",
    "test": "Test split",
    "validation": "Validation split",
    "held-out": "Held-out set",
}


@dataclass(frozen=True)
class Figure:
    """One number of one evaluation: ``value`` in [0, 1], its 95% bootstrap interval when stored."""

    key: str
    label: str
    value: float
    ci95: tuple[float, float] | None = None

    @property
    def text(self) -> str:
        return figure_text(self.value, self.ci95)


@dataclass(frozen=True)
class Evaluation:
    """The headline figures of one evaluation set (a results section of the model card).

    Attributes:
        name: the card's key (``cv``, ``test``, ``idrid``, ``external``, ``val``...).
        kind: :func:`split_kind` of ``name``.
        title: the card's section title (what the set is; empty for a checkpoint without a card).
        n, n_patients: images and patients scored (None when not stored).
        figures: in :data:`HEADLINE` order, only those stored.
    """

    name: str
    kind: str
    title: str
    n: int | None
    n_patients: int | None
    figures: tuple[Figure, ...]

    @property
    def heading(self) -> str:
        """``Test split (742 images, 371 patients)``: names the split the figures were measured on."""
        size = []
        if isinstance(self.n, int):
            size.append(f"{self.n} images")
        if isinstance(self.n_patients, int):
            size.append(f"{self.n_patients} patients")
        return _KIND_NAMES[self.kind] + (f" ({', '.join(size)})" if size else "")

    @property
    def short_name(self) -> str:
        """The set's name for a one-line tag: the card title up to its first ``:`` or ``(``, else the heading."""
        short = self.title.split(":")[0].split("(")[0].strip()
        return short or _KIND_NAMES[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """Plain types for JSON (``GET /models``): every figure with its value, interval and printed text."""
        return {
            "name": self.name,
            "kind": self.kind,
            "title": self.title,
            "heading": self.heading,
            "n": self.n,
            "n_patients": self.n_patients,
            "figures": [
                {
                    "key": f.key,
                    "label": f.label,
                    "value": f.value,
                    "ci95": list(f.ci95) if f.ci95 else None,
                    "text": f.text,
                }
                for f in self.figures
            ],
        }


def _ece_label(calibration: Mapping[str, Any]) -> str:
    scaled = calibration.get("method", "none") != "none" and calibration.get("temperature", 1.0) != 1.0
    return "ECE after temperature scaling" if scaled else "ECE"


def _ci(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2 and all(_finite(c) for c in value):
        return (float(value[0]), float(value[1]))
    return None


def _evaluation(name: str, title: str, flat: Mapping[str, Any], calibration: Mapping[str, Any]) -> Evaluation:
    figures = []
    for key, label in HEADLINE:
        value = flat.get(key)
        if _finite(value):
            label = _ece_label(calibration) if key == "ece" else label
            figures.append(Figure(key, label, float(value), _ci(flat.get(f"{key}_ci95"))))
    n, n_patients = flat.get("n"), flat.get("n_patients")
    return Evaluation(
        name=name,
        kind=split_kind(name),
        title=title,
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        n_patients=n_patients if isinstance(n_patients, int) and not isinstance(n_patients, bool) else None,
        figures=tuple(figures),
    )


def _from_training(split: Mapping[str, Any]) -> dict[str, Any]:
    """A training-run metrics split in the card's flat layout (``referable.roc_auc`` -> ``referable_roc_auc``)."""
    flat: dict[str, Any] = {"n": split.get("n"), "n_patients": split.get("n_patients")}
    for key, path in _TRAINING_KEYS.items():
        node: Any = split
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        flat[key] = node
        parent = split.get(path[0]) if len(path) > 1 else split
        if isinstance(parent, Mapping):
            flat[f"{key}_ci95"] = parent.get(f"{path[-1]}_ci95")
    return flat


def model_figures(
    card: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None, calibration: Mapping[str, Any] | None = None
) -> list[Evaluation]:
    """Every evaluation of a checkpoint with its headline figures, in the card's order.

    Args:
        card: the checkpoint's ``card`` (``training.ship.card``): ``{"evaluations": {name: {"title", "n",
            "n_patients", "accuracy", "accuracy_ci95", ...}}}``; the source of truth when present.
        metrics: the checkpoint's ``metrics`` (training run); read only when the card has no evaluations.
        calibration: the checkpoint's ``calibration`` block; names the ECE "after temperature scaling".

    Returns:
        One :class:`Evaluation` per set with at least one finite figure; ``[]`` when nothing is stored.
    """
    calibration = calibration or {}
    evaluations = (card or {}).get("evaluations")
    out: list[Evaluation] = []
    if isinstance(evaluations, Mapping) and evaluations:
        for name, ev in evaluations.items():
            if isinstance(ev, Mapping):
                out.append(_evaluation(str(name), str(ev.get("title") or ""), ev, calibration))
    else:
        metrics = metrics or {}
        splits = [k for k in _TRAINING_SPLITS if isinstance(metrics.get(k), Mapping)]
        if "cv" in splits:
            # A cross-validated model's own validation split is the few images left over for the final
            # fit; the out-of-fold figures describe the recipe.
            splits = [k for k in splits if split_kind(k) != "validation"]
        out = [_evaluation(k, "", _from_training(metrics[k]), calibration) for k in splits]
    return [ev for ev in out if ev.figures]
