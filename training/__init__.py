"""Training, evaluation and shipping of RetinaScope models, one package per stage.

* ``training.config``: the frozen, typed :class:`~training.config.TrainConfig` every stage reads.
* ``training.data``: dataset readers, patient-disjoint splits, prepared pixels, batches.
* ``training.fit``: one run (``pipeline.train`` -> ``run.fit``), cross-validation, SimCLR;
  the loop itself is ``training.fit.loop.train_one_epoch`` (torchvision-reference style).
* ``training.evaluate``: forward passes, calibration, metrics, reports, operating points.
* ``training.ship``: model card, int8 calibration; ``training.sites``: site profiles;
  ``training.gate``: the image gate.

Commands (each ``--help``): ``python -m training.train``, ``training.cv``, ``training.evaluate``,
``training.evaluate.<study>``, ``training.ship.<step>``, ``training.site_profile``,
``training.sites.check``, ``training.fit_gate``; ``training/README.md`` has the table.
"""
