"""Stage 3, evaluate: how good is a model, and at which threshold should it refer?

Library (also used by the fit stage, which scores every epoch): ``predict`` (forward passes),
``calibration`` (softmax with a temperature, NLL, ECE, temperature fitting), ``metrics``,
``plots``, ``report`` (the files every evaluation writes), ``rows`` (which rows of a dataset to
score), ``thresholds`` (referral operating points) and ``run`` (:func:`evaluate_checkpoint`).

Commands: ``python -m training.evaluate`` (a checkpoint on a dataset), and
``python -m training.evaluate.X`` for ``operating_point``, ``volumes`` (OCT volume rule),
``exams`` (per-patient exam rule), ``keywords`` (non-DR findings), ``hog_svm`` (classical
OCT anchor), ``cam_gallery`` (Grad-CAM overlays) and ``look_alike`` (augmentation contact sheet).
"""
