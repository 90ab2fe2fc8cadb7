"""Training, evaluation and cross-validation of RetinaScope models.

Entry points (each ``python -m training.<name> --help``):

* ``training.train``: train one model from a YAML config (supervised, or SimCLR when the
  config has a ``simclr:`` section), save a self-describing checkpoint.
* ``training.evaluate``: metrics, bootstrap intervals, report and plots for a checkpoint.
* ``training.cv``: patient-grouped stratified K-fold cross-validation (+ a final model).

The loop itself is in :mod:`training.engine` (torchvision-reference style).
"""
