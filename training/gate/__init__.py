"""Fitting the image gate (``retina/gate.py``), by stage.

* :mod:`~training.gate.data`: every real retinal image and negative as cached gate views;
* :mod:`~training.gate.augment`: poor-capture copies of retinas (positives), hard copies of
  photographs (negatives), the report's copies, the batched training augmentation;
* :mod:`~training.gate.negatives`: library sample photos and generated documents, charts, noise;
* :mod:`~training.gate.fit`: the CNN, grouped cross-validation, thresholds, limits, :func:`run`;
* :mod:`~training.gate.grade`: the learned quality grade (EyeQ);
* :mod:`~training.gate.report`: tables, cost, the contact sheet of refused images, ``report.md``;
* :mod:`~training.gate.cli`: the command line (``python -m training.gate`` or ``python -m training.fit_gate``).
"""
