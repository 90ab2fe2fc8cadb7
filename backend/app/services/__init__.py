"""Serving machinery kept apart from HTTP: model store, micro-batcher, upload intake, CAM, metrics."""
