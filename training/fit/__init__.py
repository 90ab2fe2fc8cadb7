"""Stage 2, fit: train one model (or K, for cross-validation) from a :class:`~training.config.TrainConfig`.

``pipeline.train`` (the whole run) -> ``run.fit`` (one model: ``trainer`` builds loaders, model
and optimiser; ``epochs`` runs the loop of ``loop.train_one_epoch`` with early stopping;
``run.finalise`` fits the temperature and writes ``best.pt``). ``crossval`` fits one model per
fold, ``simclr`` pretrains a backbone first, ``warm_start`` and ``distributed`` are what their
names say. The forward passes and metrics it scores with live one stage below, in
:mod:`training.evaluate`.
"""
