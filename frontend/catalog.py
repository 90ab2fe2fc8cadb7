"""Choices over the backend's model list (pure, no Streamlit): the task defaults, the auto-detect stand-in,
the model that answered, the fundus model whose site profiles apply, and the disclaimer to show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from frontend.answers import Prediction
from frontend.model_info import AUTO_MODEL, ModelInfo
from frontend.text import TASK_LABELS


def task_defaults(models: Sequence[ModelInfo]) -> list[ModelInfo]:
    """The default model of each known task (OCT, then fundus): where ``?model=auto`` sends an image."""
    found = (next((m for m in models if m.task == t and m.default), None) for t in TASK_LABELS)
    return [m for m in found if m is not None]


def auto_model(models: Sequence[ModelInfo]) -> ModelInfo:
    """A stand-in :class:`ModelInfo` for ``?model=auto``.

    Its ``version`` joins the task defaults' ids and versions, so the prediction cache (keyed on
    model id and version) asks again when either default model changes.
    """
    defaults = task_defaults(models)
    loaded = [m for m in defaults if m.loaded]
    served = ", ".join(f"`{m.id}` (v{m.version})" for m in loaded) or "none"
    return ModelInfo(
        id=AUTO_MODEL,
        task=AUTO_MODEL,
        version="+".join(f"{m.id}@{m.version}" for m in defaults),
        description="The backend detects per image whether it is an OCT B-scan or a fundus photo and "
        f"answers with that task's default model: {served}.",
        loaded=bool(loaded),
        error=None if loaded else "no default OCT or fundus model is loaded",
        disclaimer=disclaimer(defaults),
    )


def served_model(models: Sequence[ModelInfo], model: ModelInfo, pred: Prediction) -> ModelInfo:
    """The model that answered ``pred``: the chosen one, or for ``auto`` the one the backend picked."""
    if pred.model == model.id:
        return model
    found = next((m for m in models if m.id == pred.model), None)
    if found is not None:
        return found
    # Not in the model list (renamed while the list was cached): enough to draw and explain it.
    return ModelInfo(id=pred.model, task=pred.task, version=pred.model_version, classes=tuple(pred.probabilities or ()))


def disclaimer(models: Sequence[ModelInfo]) -> str:
    """The backend's research-use disclaimer (the first model that states one); empty from an older backend."""
    return next((m.disclaimer for m in models if m.disclaimer), "")


def fundus_model(models: Sequence[ModelInfo], model: ModelInfo) -> ModelInfo | None:
    """The fundus model whose site profiles apply: the chosen one, or with auto-detect the fundus default."""
    if model.task == "fundus":
        return model
    if model.task == AUTO_MODEL:
        return next((m for m in models if m.task == "fundus" and m.default), None)
    return None


def loaded_sites(model: ModelInfo | None) -> list[dict[str, Any]]:
    """The model's site profiles the backend loaded (``{name, loaded, default, error, profile}`` each)."""
    return [s for s in (model.sites if model else ()) if s.get("loaded")]
