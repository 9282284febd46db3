"""Image decoding: DICOM, PNG and JPEG bytes to one grey-scale float32 image in [0, 1]."""

from __future__ import annotations

from cxrmsn.errors import DecodeError
from cxrmsn.imaging.detect import detect_format
from cxrmsn.imaging.types import DecodedImage, DecodeLimits, ImageInfo

__all__ = ["DecodeError", "DecodeLimits", "DecodedImage", "ImageInfo", "decode", "detect_format"]

DEFAULT_LIMITS = DecodeLimits()


def decode(data: bytes, *, limits: DecodeLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode an upload into a grey-scale image in [0, 1] plus safe metadata.

    The format is detected from the bytes. Raises a ``cxrmsn.errors.DecodeError``
    subclass (with ``code``, ``detail`` and ``http_status``) for anything that is not
    one decodable grey-scale 2-D image; no other exception escapes.
    """
    fmt = detect_format(data)
    if fmt == "dicom":
        from cxrmsn.imaging.dicom import decode_dicom

        return decode_dicom(data, limits)
    from cxrmsn.imaging.raster import decode_raster

    return decode_raster(data, fmt, limits)
