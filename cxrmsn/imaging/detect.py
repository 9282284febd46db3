"""Detect the format of an upload from its bytes, never from a file name."""

from __future__ import annotations

from cxrmsn.errors import DecodeError, UnsupportedFormatError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# Formats people upload by mistake, named in the error so the message is useful.
_KNOWN_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"PK\x03\x04", "ZIP"),
    (b"%PDF", "PDF"),
    (b"BM", "BMP"),
    (b"\x1f\x8b", "gzip"),
    (b"RIFF", "RIFF/WebP"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 (bare; only inside DICOM)"),
)

# Groups a DICOM data set without preamble usually starts with: file meta or identifying.
_DICOM_FIRST_GROUPS = (0x0002, 0x0008)


def looks_like_dicom_without_preamble(data: bytes) -> bool:
    if len(data) < 8:
        return False
    group = int.from_bytes(data[0:2], "little")
    if group not in _DICOM_FIRST_GROUPS:
        return False
    vr = data[4:6]
    explicit_vr = vr.isalpha() and vr.isupper()
    implicit_length = int.from_bytes(data[4:8], "little")
    return explicit_vr or implicit_length < len(data)


def detect_format(data: bytes) -> str:
    """Return "dicom", "png" or "jpeg", or raise a DecodeError saying what it is instead."""
    if not data:
        raise DecodeError("the upload is empty", code="empty_input")
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if looks_like_dicom_without_preamble(data):
        return "dicom"
    for signature, name in _KNOWN_OTHER_FORMATS:
        if data.startswith(signature):
            raise UnsupportedFormatError(f"{name} files are not supported; send DICOM, PNG or JPEG")
    raise UnsupportedFormatError("not a DICOM, PNG or JPEG file (detected by content, not by file name)")
