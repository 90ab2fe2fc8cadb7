"""The network a run trains: built (warm-started where asked), partly frozen, and its optimiser."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from retina.preprocessing import PreprocessSpec
from training.config import TrainConfig
from training.fit.warm_start import build_model_warm

logger = logging.getLogger("training.train")


def model_args_for(cfg: TrainConfig, spec: PreprocessSpec, num_classes: int) -> dict[str, Any]:
    return {"in_channels": spec.channels, "num_classes": num_classes, **copy.deepcopy(cfg.model.args)}


def build_for_training(
    cfg: TrainConfig, spec: PreprocessSpec, num_classes: int
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Build ``model.arch``; returns ``(model, model_args to save, init info)``.

    ``weights`` (ImageNet/local init) is dropped from the saved ``model_args``: the checkpoint
    holds the trained weights, and serving must rebuild it without the pretrained file.
    A missing pretrained file raises, unless ``model.args.weights_missing: scratch`` asks for
    random initialisation; that is logged as a warning and recorded in the checkpoint, and
    the backbone is then trained (a frozen random backbone would be meaningless).
    """
    arch = cfg.model.arch
    args = model_args_for(cfg, spec, num_classes)
    on_missing = args.pop("weights_missing", "error")
    init: dict[str, Any] = {"weights": args.get("weights"), "pretrained": bool(args.get("weights"))}
    try:
        model = build_model_warm(arch, **args)
    except FileNotFoundError as e:
        if on_missing != "scratch":
            raise
        logger.warning("PRETRAINED WEIGHTS MISSING, training %s from scratch (weights_missing=scratch): %s", arch, e)
        args["weights"] = None
        if args.get("freeze_backbone"):
            logger.warning("freeze_backbone disabled: a frozen randomly initialised backbone cannot learn")
            args["freeze_backbone"] = False
        init.update(pretrained=False, fallback="scratch", reason=str(e))
        model = build_model_warm(arch, **args)
    saved = {k: v for k, v in args.items() if k != "weights"}
    return model, saved, init


def make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    lr = o.lr if lr is None else lr
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True)


def freeze_module(module: nn.Module) -> None:
    """No gradients, and BatchNorm running statistics kept (see :func:`keep_frozen_bn_eval`)."""
    for p in module.parameters():
        p.requires_grad = False


def keep_frozen_bn_eval(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode.

    A frozen (pretrained) backbone must keep its running statistics: in train mode they
    would drift towards the small training batches and change the features it was frozen for.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
