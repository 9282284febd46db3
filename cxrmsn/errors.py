"""The one exception family for inputs that cannot become a model input.

Every failure of ``cxrmsn.imaging.decode`` raises a ``DecodeError`` subclass carrying
a stable machine-readable ``code``, a human ``detail`` message (never containing
patient identifiers) and the HTTP status the service answers with.
"""

from __future__ import annotations


class DecodeError(Exception):
    """An upload that cannot be decoded into one grey-scale 2-D image."""

    code: str = "undecodable"
    http_status: int = 400

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class CorruptInputError(DecodeError):
    """The file claims a known format but its bytes cannot be read (400)."""

    code = "corrupt_input"
    http_status = 400


class UnsupportedFormatError(DecodeError):
    """Not DICOM, PNG or JPEG, or a DICOM transfer syntax with no decoder (415)."""

    code = "unsupported_format"
    http_status = 415


class ImageTooLargeError(DecodeError):
    """The declared image exceeds the pixel-count limit (413)."""

    code = "image_too_large"
    http_status = 413


class NotSingleGreyImageError(DecodeError):
    """Readable, but not one grey-scale 2-D image a chest X-ray model can take (422)."""

    code = "not_single_grey_image"
    http_status = 422


class DicomOutputError(DecodeError):
    """DICOM output (SR, SC) asked for, but the upload is not DICOM or lacks UIDs to reference (422)."""

    code = "dicom_output_unavailable"
    http_status = 422


class NotAChestRadiographError(DecodeError):
    """Decodable, but not taken for a chest radiograph (422): the out-of-distribution score is
    over the model's threshold, or the DICOM Modality or ViewPosition is outside what the model
    was trained on (``cxrmsn.ood.decide``). ``score`` and ``threshold`` are None where only the
    DICOM header decided."""

    code = "not_a_chest_radiograph"
    http_status = 422

    def __init__(self, detail: str, *, score: float | None = None, threshold: float | None = None) -> None:
        super().__init__(detail)
        self.score = score
        self.threshold = threshold


#: Every code the decoder can raise, with its HTTP status and meaning (documented in the README).
ERROR_CODES: dict[str, tuple[int, str]] = {
    "empty_input": (400, "the upload has no bytes"),
    "corrupt_input": (400, "a DICOM, PNG or JPEG whose bytes cannot be parsed or decoded"),
    "pixel_data_truncated": (400, "DICOM pixel data shorter than Rows x Columns x BitsAllocated"),
    "unsupported_format": (415, "not DICOM, PNG or JPEG (GIF, TIFF, ZIP, text ...)"),
    "unsupported_transfer_syntax": (415, "a DICOM transfer syntax no installed decoder handles"),
    "image_too_large": (413, "more pixels than the decoder's limit (decompression-bomb guard)"),
    "no_pixel_data": (422, "a DICOM without PixelData (e.g. a structured report)"),
    "multi_frame": (422, "a DICOM with NumberOfFrames > 1"),
    "not_greyscale": (422, "SamplesPerPixel != 1 or a colour photometric interpretation"),
    "float_pixel_data": (422, "DICOM float or double float pixel data"),
    "image_too_small": (422, "a side shorter than the minimum (default 16 px)"),
    "bad_aspect_ratio": (422, "longer side more than 4 times the shorter one"),
    "blank_image": (422, "every pixel has the same value: nothing to classify"),
    "truncated_input": (
        400,
        "a JPEG (plain or in DICOM) whose scan data is too short for the size its header declares",
    ),
    "non_finite_pixels": (
        422,
        "the DICOM rescale, LUT or window arithmetic overflows (e.g. RescaleSlope 1e39, WindowWidth 1e308)",
    ),
    "dicom_output_unavailable": (
        422,
        "DICOM output asked for, but the upload is not DICOM or lacks a UID the output must reference",
    ),
    "not_a_chest_radiograph": (
        422,
        "the out-of-distribution score is over the model's threshold (the detail names both), or the "
        "DICOM Modality is not CR/DX/DR or its ViewPosition is one the training images did not have "
        "(CXR_MSN_OOD=warn serves it with a warning instead; docs/ood.md)",
    ),
}
