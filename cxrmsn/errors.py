"""The project's error model: every code the API can answer, and the exceptions that carry one.

``ERROR_CODES`` is the one registry: code -> HTTP status and meaning. The service answers
every refusal as ``{"error": CODE, "detail": MESSAGE}`` with that status, its OpenAPI
document declares them (``serving.api_errors``), and the README's error table is tested
against it. ``ApiError`` carries a registered code and a ``detail`` (never a patient
identifier or a submitted value); ``DecodeError`` is its family for inputs that cannot
become a model input, raised by ``cxrmsn.imaging.decode`` and by ``cxr-msn predict``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    """One error the API can answer: its HTTP status, what it means, and who answers it."""

    status: int
    meaning: str
    where: str = "decoder"  # decoder: the service, `cxr-msn predict` and the PACS listener


_SERVICE, _PACS = "service", "service, STOW-RS"
#: Every code the API can answer, with its HTTP status and meaning (the README's error table).
ERROR_CODES: dict[str, ErrorCode] = {
    "empty_input": ErrorCode(400, "the upload has no bytes"),
    "corrupt_input": ErrorCode(
        400, "a DICOM, PNG or JPEG whose bytes cannot be parsed or decoded (truncated, broken codestream)"
    ),
    "pixel_data_truncated": ErrorCode(400, "DICOM pixel data shorter than Rows x Columns x BitsAllocated"),
    "truncated_input": ErrorCode(
        400, "a JPEG (plain or in DICOM) whose scan data stops before the size its header declares"
    ),
    "unsupported_format": ErrorCode(415, "not DICOM, PNG or JPEG (GIF, TIFF, ZIP, PDF, text, HTML ...)"),
    "unsupported_transfer_syntax": ErrorCode(415, "a DICOM transfer syntax no installed decoder handles"),
    "image_too_large": ErrorCode(
        413, "more pixels than the limit (decompression-bomb guard), checked from the header"
    ),
    "no_pixel_data": ErrorCode(422, "a DICOM without PixelData (e.g. a structured report)"),
    "multi_frame": ErrorCode(422, "NumberOfFrames > 1"),
    "not_greyscale": ErrorCode(422, "SamplesPerPixel != 1 or a colour photometric interpretation"),
    "float_pixel_data": ErrorCode(422, "DICOM Float/Double Float Pixel Data"),
    "image_too_small": ErrorCode(422, "a side shorter than 16 px (or zero rows/columns)"),
    "bad_aspect_ratio": ErrorCode(422, "the longer side more than 4 times the shorter"),
    "blank_image": ErrorCode(422, "every pixel has the same value: nothing to classify"),
    "non_finite_pixels": ErrorCode(
        422, "the modality LUT / rescale or the VOI LUT / window overflows to infinity or NaN"
    ),
    "dicom_output_unavailable": ErrorCode(
        422,
        "`/predict_dicom` / `--dicom-dir`: the input is not DICOM, or lacks a UID the report "
        "references (the detail names it)",
    ),
    "not_a_chest_radiograph": ErrorCode(
        422,
        "the out-of-distribution score is over the model's threshold (the detail names both), or "
        "the DICOM Modality is not CR/DX/DR or its ViewPosition is one the training images did "
        "not have; `CXR_MSN_OOD=warn` serves it with a warning instead (docs/ood.md)",
    ),
    "decode_timeout": ErrorCode(
        422,
        "decoding took longer than `CXR_MSN_DECODE_DEADLINE_S` (10 s); the decode worker was "
        'killed (docs/reliability.md, "Bounded decoding")',
        _SERVICE,
    ),
    "decode_too_large": ErrorCode(
        413,
        "decoding needed more than `CXR_MSN_DECODE_MEMORY_MIB` (1536 MiB) or the decode worker "
        "died; or, for DICOM output, a header over 4 MiB once read",
        _SERVICE,
    ),
    "decode_unavailable": ErrorCode(
        503, "no decode worker could be started (see the server log); the upload was not looked at", _SERVICE
    ),
    "upload_too_large": ErrorCode(
        413,
        "the body exceeds `CXR_MSN_MAX_UPLOAD_BYTES` (refused from the Content-Length header "
        "before the body is read)",
        _SERVICE,
    ),
    "upload_too_slow": ErrorCode(
        408, "the body did not arrive in time (`CXR_MSN_UPLOAD_*`); the connection is closed", _SERVICE
    ),
    "client_disconnected": ErrorCode(
        400, "the client left before the body was complete (sent to nobody, but logged and counted)", _SERVICE
    ),
    "overloaded": ErrorCode(
        429,
        "more than `CXR_MSN_MAX_CONCURRENCY` requests at once; retry after `Retry-After` seconds",
        _SERVICE,
    ),
    "too_many_files": ErrorCode(413, "more than `CXR_MSN_MAX_FILES_PER_BATCH` files in one batch", _SERVICE),
    "invalid_request": ErrorCode(
        400,
        "the request does not match the API: no `file` part, a text value or a second part where "
        "a file belongs, an unknown field or value, too many parts, a bad multipart boundary",
        _SERVICE,
    ),
    "unsupported_media_type": ErrorCode(
        415,
        "a predict route's body is not `multipart/form-data`, or a STOW-RS part is not `application/dicom`",
        _PACS,
    ),
    "method_not_allowed": ErrorCode(405, "a predict route takes POST only (`Allow: POST`)", _SERVICE),
    "not_found": ErrorCode(404, "no such `/ui` page asset", _SERVICE),
    "inference_failed": ErrorCode(
        500, "a fault of the model backend (details only in the server log)", _SERVICE
    ),
    "internal_error": ErrorCode(500, "any other server fault (details only in the server log)", _SERVICE),
    "invalid_multipart": ErrorCode(
        400, 'a STOW-RS body that is not `multipart/related; type="application/dicom"` with parts', _PACS
    ),
    "too_many_parts": ErrorCode(413, "more instances in one STOW-RS request than it takes", _PACS),
    "pacs_not_configured": ErrorCode(
        503, "STOW-RS without a valid `CXR_MSN_PACS_DESTINATION` to send the results to (docs/pacs.md)", _PACS
    ),
}


class ApiError(Exception):
    """A refusal: a code from ``ERROR_CODES`` (which gives its HTTP status) and a detail."""

    code: str = "internal_error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code

    @property
    def http_status(self) -> int:
        return ERROR_CODES[self.code].status

    def to_dict(self) -> dict[str, str]:
        """The one error body of the API."""
        return {"error": self.code, "detail": self.detail}


class DecodeError(ApiError):
    """An upload that cannot be decoded into one grey-scale 2-D image."""

    code = "corrupt_input"


class CorruptInputError(DecodeError):
    """The file claims a known format but its bytes cannot be read (400)."""

    code = "corrupt_input"


class UnsupportedFormatError(DecodeError):
    """Not DICOM, PNG or JPEG, or a DICOM transfer syntax with no decoder (415)."""

    code = "unsupported_format"


class ImageTooLargeError(DecodeError):
    """The declared image exceeds the pixel-count limit (413)."""

    code = "image_too_large"


class NotSingleGreyImageError(DecodeError):
    """Readable, but not one grey-scale 2-D image a chest X-ray model can take (422)."""

    code = "not_greyscale"  # each raise names its own code


class DicomOutputError(DecodeError):
    """DICOM output (SR, SC) asked for, but the upload is not DICOM or lacks UIDs to reference (422)."""

    code = "dicom_output_unavailable"


class NotAChestRadiographError(DecodeError):
    """Decodable, but not taken for a chest radiograph (422): the out-of-distribution score is
    over the model's threshold, or the DICOM Modality or ViewPosition is outside what the model
    was trained on (``cxrmsn.ood.decide``). ``score`` and ``threshold`` are None where only the
    DICOM header decided."""

    code = "not_a_chest_radiograph"

    def __init__(self, detail: str, *, score: float | None = None, threshold: float | None = None) -> None:
        super().__init__(detail)
        self.score = score
        self.threshold = threshold
