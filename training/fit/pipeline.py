"""A whole training run from a resolved config: data -> :func:`~training.fit.run.fit` (or SimCLR) -> checkpoints.

``python -m training.train`` parses its flags, resolves the :class:`~training.config.TrainConfig`,
sets up logging and calls :func:`train`; everything after that happens here, in one pass:

    training.data.bundle.prepare_data     read, cap, split by patient, prepare pixels (cached)
    training.fit.run.fit                  loaders -> trainer -> epoch loop -> temperature -> best.pt

A config with a ``simclr:`` section goes to :func:`training.fit.simclr.run` instead
(pretraining, then one fine-tuned checkpoint per label fraction).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from retina.runtime import resolve_device
from training.config import ConfigError, TrainConfig
from training.data.bundle import prepare_data
from training.fit import distributed, simclr
from training.fit.run import fit

logger = logging.getLogger("training.train")


def train(cfg: TrainConfig, resume: dict[str, Any] | None = None) -> Path:
    """Train from a resolved config; returns the output directory (``cfg.out_dir``, saved as ``out``).

    Started by ``torchrun`` (``RANK``/``WORLD_SIZE`` set), it trains with DistributedDataParallel,
    one process per GPU (or CPU slot); see :mod:`training.fit.distributed`.
    """
    out = cfg.out_dir
    cfg = replace(cfg, out=str(out))  # the saved config names where the run went
    dist = distributed.from_env()
    logger.info("config %s -> %s", cfg.name, out)
    t0 = time.perf_counter()
    if cfg.simclr is not None:
        if dist.enabled:
            raise ConfigError("SimCLR configs train in one process; run them without torchrun")
        if resume is not None:
            raise ConfigError("--resume is supported for supervised runs only")
        simclr.run(cfg, out)
    else:
        try:
            distributed.init(dist, resolve_device(cfg.device))  # the group, before the first barrier
            with distributed.main_first(dist):  # rank 0 fills the prepared-image cache, the others read it
                bundle = prepare_data(cfg)
            s = bundle.splits
            fit(cfg, bundle, out, train_idx=s["train"], val_idx=s["val"], test_idx=s["test"], resume=resume, dist=dist)
        finally:
            distributed.shutdown()
    logger.info("done in %.1fs", time.perf_counter() - t0)
    return out
