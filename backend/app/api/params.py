"""What the image routes share: their query and file parameters, their OpenAPI error tables, header values."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import File, Query, UploadFile

from backend.app.schemas import ErrorResponse
from retina.cam import METHODS

ModelParam = Annotated[
    str,
    Query(
        description="Model id (see GET /models), task alias `oct` / `fundus` (that task's default model), or "
        "`auto` (the image gate detects OCT vs fundus and picks that task's default model).",
        examples=["oct", "fundus", "auto"],
    ),
]
SiteParam = Annotated[
    str | None,
    Query(
        description="Site profile (see `sites` in GET /models): the clinic's own temperature and fundus operating "
        "points. `default` = the model's own; omitted = `RETINA_DEFAULT_SITE` (else the model's own). Fundus only: "
        "OCT answers ignore it. Unknown: 422 `unknown_site`.",
    ),
]
FileParam = Annotated[UploadFile, File(description="The image (DICOM, JPEG, PNG, BMP, TIFF, WebP or GIF).")]
FilesParam = Annotated[list[UploadFile], File(description="Images, repeated `files` fields (up to max_batch_files).")]
MethodParam = Annotated[str, Query(description=f"CAM method: {', '.join(METHODS)}.")]
AlphaParam = Annotated[float, Query(ge=0.0, le=1.0, description="Heatmap opacity in the overlay.")]
FrameParam = Annotated[
    int | None,
    Query(
        ge=0,
        description="For a multi-frame DICOM (an OCT volume): the 0-based B-scan to use (the volume limits "
        "RETINA_MAX_VOLUME_* apply). Without it a multi-frame file is refused (422): send it to /predict/volume.",
    ),
]
ResultFormatParam = Annotated[
    Literal["json", "dicom-sr"],
    Query(description="`dicom-sr`: the answer as a DICOM Structured Report (TID 1500, VerificationFlag UNVERIFIED)."),
]
VolumeFileParam = Annotated[
    UploadFile, File(description="A multi-frame DICOM: Ophthalmic Tomography or multi-frame Secondary Capture.")
]

IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "`unauthorized`: API key configured and missing or wrong"},
    404: {"model": ErrorResponse, "description": "`unknown_model`"},
    413: {"model": ErrorResponse, "description": "`file_too_large` (or `too_many_files` for /predict/batch)"},
    415: {
        "model": ErrorResponse,
        "description": "`unsupported_media_type`: not a DICOM/JPEG/PNG/BMP/TIFF/WebP/GIF (or a DICOM codec other "
        "than uncompressed, JPEG baseline, RLE)",
    },
    422: {
        "model": ErrorResponse,
        "description": "`not_retinal_image` (the image gate saw neither an OCT B-scan nor a fundus photo), "
        "`wrong_modality` (e.g. a fundus photo sent to an OCT model; the detail names the right model), "
        "`ungradable_image` (/gradcam only), `unknown_site` (no such site profile), `empty_file`, `invalid_image` "
        "(truncated/undecodable, multi-frame DICOM without `frame=`: use /predict/volume), `image_too_large` "
        "(decompression bomb), `invalid_parameter`",
    },
    503: {
        "model": ErrorResponse,
        "description": "`not_ready`: the model failed to load (see GET /ready); "
        "`audit_unavailable`: the answer could not be written to the audit log",
    },
}
VOLUME_ERRORS: dict[int | str, dict[str, Any]] = {
    **IMAGE_ERRORS,
    413: {
        "model": ErrorResponse,
        "description": "`file_too_large` (over RETINA_MAX_VOLUME_UPLOAD_MB) or `too_many_frames` "
        "(over RETINA_MAX_VOLUME_FRAMES)",
    },
    415: {"model": ErrorResponse, "description": "`unsupported_media_type`: not DICOM (or an unsupported codec)"},
    422: {
        "model": ErrorResponse,
        "description": "`not_retinal_image` / `wrong_modality` (most frames are not OCT B-scans), `invalid_parameter` "
        "(a fundus model), `invalid_image`, `image_too_large` (rows x columns x frames over RETINA_MAX_VOLUME_PIXELS)",
    },
}
CAM_ERRORS: dict[int | str, dict[str, Any]] = {
    **IMAGE_ERRORS,
    404: {"model": ErrorResponse, "description": "`unknown_model` or `unknown_method`"},
}


def header_value(value: str) -> str:
    # Header values must be latin-1; class names of extra models might not be.
    return value if value.isascii() else quote(value)
