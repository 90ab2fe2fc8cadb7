"""The models the service ships, keyed by id, and the check that a checkpoint is one of them.

Modelled on torchvision's ``register_model``/``get_model`` with ``meta["categories"]`` and
on MONAI bundles' ``metadata.json``: what a model *must* be (architecture, classes,
preprocessing, CAM layer) is declared here once; the checkpoint file is then verified
against it at startup, and a mismatch refuses to serve rather than guessing.

Checkpoints in the models directory that are not registered here are still servable
(they are self-describing); they are validated against their own metadata only.
"""

from __future__ import annotations

from dataclasses import dataclass

from retina.checkpoint import CheckpointMeta
from retina.labels import DR_GRADES, OCT_CLASSES
from retina.models import ARCHS
from retina.preprocessing import PreprocessSpec, get_preset

TASKS = ("oct", "fundus")


@dataclass(frozen=True)
class ModelSpec:
    """A servable model.

    Attributes:
        key: model id used in ``?model=`` (task aliases ``oct``/``fundus`` map to defaults).
        task: ``oct`` or ``fundus``.
        arch: registered architecture name (``retina.models.ARCHS``).
        checkpoint: file name relative to ``settings.models_dir``.
        class_names: output order of the logits.
        preprocess: the spec the checkpoint must carry.
        cam_layer: submodule path for CAM, resolved with ``get_submodule``.
        default: whether this is the task's default model.
    """

    key: str
    task: str
    arch: str
    checkpoint: str
    class_names: tuple[str, ...]
    preprocess: PreprocessSpec
    cam_layer: str
    default: bool = False
    description: str = ""


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.key in MODELS:
        raise ValueError(f"model {spec.key!r} is already registered")
    if spec.task not in TASKS:
        raise ValueError(f"unknown task {spec.task!r}")
    if spec.arch not in ARCHS:
        raise ValueError(f"model {spec.key!r}: unknown architecture {spec.arch!r}")
    if spec.default and any(m.default and m.task == spec.task for m in MODELS.values()):
        raise ValueError(f"task {spec.task!r} already has a default model")
    MODELS[spec.key] = spec
    return spec


def default_for(task: str) -> ModelSpec:
    for m in MODELS.values():
        if m.task == task and m.default:
            return m
    raise KeyError(f"no default model for task {task!r}")


def mismatches(spec: ModelSpec, meta: CheckpointMeta) -> list[str]:
    """Human-readable differences between what a model must be and what the file holds."""
    problems = []
    if meta.arch != spec.arch:
        problems.append(f"arch is {meta.arch!r}, expected {spec.arch!r}")
    if meta.task != spec.task:
        problems.append(f"task is {meta.task!r}, expected {spec.task!r}")
    if tuple(meta.class_names) != tuple(spec.class_names):
        problems.append(f"class_names are {meta.class_names}, expected {list(spec.class_names)}")
    if meta.preprocess != spec.preprocess:
        problems.append(f"preprocess is {meta.preprocess.to_dict()}, expected {spec.preprocess.to_dict()}")
    return problems


# ----------------------------------------------------------------------------- shipped defaults
# The files live in ``models/`` (``settings.models_dir``); their cards sit beside them and the
# exact training commands are in each card. Changing a line here without retraining makes the
# backend refuse to start, by design.

register_model(
    ModelSpec(
        key="oct-resnet18",
        task="oct",
        arch="resnet18",
        checkpoint="oct-resnet18.pt",
        class_names=OCT_CLASSES,
        preprocess=get_preset("oct_band_128"),
        cam_layer=ARCHS["resnet18"].cam_layer,
        default=True,
        description="ResNet-18 on the flattened full-width retina band of OCT B-scans (4 classes), trained from "
        "scratch on 818 Kermany OCT2017 scans",
    )
)
register_model(
    ModelSpec(
        key="fundus-resnet18",
        task="fundus",
        arch="resnet18",
        checkpoint="fundus-resnet18.pt",
        class_names=DR_GRADES,
        preprocess=get_preset("fundus_384"),
        cam_layer=ARCHS["resnet18"].cam_layer,
        default=True,
        description="ResNet-18 DR grading (0-4) on EyePACS fundus photos at 384 px, trained from scratch",
    )
)
