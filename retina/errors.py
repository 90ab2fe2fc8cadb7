"""The core's exceptions, in one place: what a caller of ``retina`` may have to catch."""

from __future__ import annotations


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (empty, truncated, unknown format, bomb).

    ``code``: ``empty_file``, ``unsupported_image``, ``invalid_image`` or ``image_too_large``.
    """

    def __init__(self, detail: str, code: str = "invalid_image") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match what it claims to be."""


class UnknownCamMethod(KeyError):
    """A CAM method name that is not a key of ``retina.cam.METHODS``."""
