"""The core's exceptions, in one place: what a caller of ``retina`` may have to catch."""

from __future__ import annotations


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (empty, truncated, unknown format, bomb).

    ``code``: ``empty_file``, ``unsupported_image``, ``invalid_image``, ``image_too_large``,
    ``too_many_frames`` or ``dicom_header_too_large``.
    """

    def __init__(self, detail: str, code: str = "invalid_image") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# ImageDecodeError.code -> the code the API answers with and a batch-scoring row carries: "not an
# image" is a media-type problem there (HTTP 415), so it is named as one.
PUBLIC_DECODE_CODES: dict[str, str] = {
    "empty_file": "empty_file",
    "unsupported_image": "unsupported_media_type",
    "invalid_image": "invalid_image",
    "image_too_large": "image_too_large",
    "too_many_frames": "too_many_frames",
    "dicom_header_too_large": "dicom_header_too_large",
}


def public_code(exc: ImageDecodeError) -> str:
    """The API's (and a batch row's) error code for a decoding failure."""
    return PUBLIC_DECODE_CODES.get(exc.code, "invalid_image")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match what it claims to be."""


class UnknownCamMethod(KeyError):
    """A CAM method name that is not a key of ``retina.cam.METHODS``."""
