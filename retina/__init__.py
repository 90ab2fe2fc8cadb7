"""RetinaScope core: the one place training and serving share.

Everything that must not drift between ``training/`` and ``backend/`` lives here:
the preprocessing spec and its transforms, the model builders, the model registry,
checkpoint save/load, label schemes and the CAM helpers. Torch-only: no web or
training-loop dependencies.
"""

__version__ = "0.1.0"
