"""Image decoding: DICOM, PNG and JPEG bytes to one grey-scale float32 image in [0, 1]."""

from __future__ import annotations

from cxrmsn.errors import CorruptInputError, DecodeError
from cxrmsn.imaging.detect import detect_format
from cxrmsn.imaging.types import DecodedImage, DecodeLimits, ImageInfo

__all__ = ["DecodeError", "DecodeLimits", "DecodedImage", "ImageInfo", "decode", "detect_format"]

DEFAULT_LIMITS = DecodeLimits()


def decode(
    data: bytes,
    *,
    limits: DecodeLimits = DEFAULT_LIMITS,
    min_size: int | None = None,
    keep_header: bool = False,
) -> DecodedImage:
    """Decode an upload into a grey-scale image in [0, 1] plus safe metadata.

    The format is detected from the bytes. Raises a ``cxrmsn.errors.DecodeError``
    subclass (with ``code``, ``detail`` and ``http_status``) for anything that is not
    one decodable grey-scale 2-D image; no other exception escapes.

    ``min_size``: the caller only needs the shorter side to be at least this many pixels
    (``PreprocessConfig.decode_min_side()``). JPEG 2000 and 8-bit JPEG are then decoded
    at the smallest resolution (1/2, 1/4, 1/8 ...) that keeps it: ``info.decode_reduction``
    says by what factor (``info.width`` and ``height`` stay the image's size) and
    ``extent`` where the image lies on the smaller pixels; pass both to ``preprocess``.
    Other syntaxes, and ``None`` (the default), decode at full resolution. A ``min_size``
    that is not a positive int raises ValueError.

    ``keep_header``: a DICOM's parsed data set, less its pixel data, is kept in ``header``
    (for DICOM output); other formats have none.
    """
    from cxrmsn.imaging.reduced import target_side

    target = target_side(min_size, limits)
    fmt = detect_format(data)
    try:
        if fmt == "dicom":
            from cxrmsn.imaging.dicom import decode_dicom

            return decode_dicom(data, limits, target, keep_header=keep_header)
        from cxrmsn.imaging.raster import decode_raster

        return decode_raster(data, fmt, limits, target)
    except (DecodeError, MemoryError, ImportError):
        raise
    except Exception as exc:  # a malformed header no check foresaw: still a client error
        # Only the exception's type is named (``from None``): its message can quote file values.
        raise CorruptInputError(f"the {fmt.upper()} file cannot be decoded ({type(exc).__name__})") from None
