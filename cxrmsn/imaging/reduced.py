"""Decoding at a reduced resolution: no more pixels than the model's input needs.

A caller that will shrink the image so that its shorter side is N px (the preprocessing's
``resize``) passes ``min_size=N`` to ``cxrmsn.imaging.decode``. Two codecs can then skip
most of the work, and the largest reduction that keeps the decoded shorter side at or
above N is taken:

- JPEG 2000 (DICOM): OpenJPEG, through Pillow, discards the finest wavelet resolution
  levels (``reduce``): each level halves both sides, up to the levels the codestream
  declares (COD/COC). What is decoded is the wavelet's low-pass band, sample ``j`` of which
  sits on full-resolution pixel ``2**levels * j`` (the 5/3 and 9/7 filters are centred on
  even samples), not on the middle of a block: ``j2k_extent`` says where the image lies.
- 8-bit JPEG (DICOM JPEG Baseline and 8-bit Extended, and JPEG uploads): libjpeg scales
  in the DCT domain (Pillow's ``draft``) by 1/2, 1/4 or 1/8; pixel ``j`` is the mean of
  block ``j``.

Everything else (lossless JPEG, JPEG-LS, RLE, native, 12-bit JPEG, PNG) and anything
unusual in a header (an image offset, a precision or signedness other than the DICOM
header's, several frames) is decoded at full resolution, as is a reduced decode that
fails: the caller's full decode then gives the same result, or the same error, as
without ``min_size``. Header checks run before any of this (``checks``, ``codestream``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, JpegImagePlugin
from PIL.Jpeg2KImagePlugin import Jpeg2KImageFile

from cxrmsn.imaging.codestream import J2KCoding
from cxrmsn.imaging.types import DecodeLimits

Extent = tuple[float, float, float, float]
#: DCT-domain scale factors libjpeg offers, largest first.
JPEG_FACTORS = (8, 4, 2)


def target_side(min_size: int | None, limits: DecodeLimits) -> int | None:
    """The shorter side a reduced decode must keep: ``min_size``, never below the size limit.

    None (decode at full resolution) when ``min_size`` is None.
    """
    if min_size is None:
        return None
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be a positive int or None, got {min_size!r}")
    return max(min_size, limits.min_side)


def _reduced_side(side: int, factor: int) -> int:
    return -(-side // factor)


def _keeps(width: int, height: int, factor: int, target: int) -> bool:
    return min(_reduced_side(width, factor), _reduced_side(height, factor)) >= target


def j2k_levels(width: int, height: int, target: int, coding: J2KCoding) -> int:
    """How many resolution levels to discard: the most that keep the shorter side >= ``target``.

    0 (full resolution) when no level can go, or when the image does not start at the
    reference grid's origin (OpenJPEG's reduced grid would then not start at its corner).
    """
    if coding.x_offset or coding.y_offset:
        return 0
    return next((n for n in range(coding.levels, 0, -1) if _keeps(width, height, 1 << n, target)), 0)


def jpeg_factor(width: int, height: int, target: int) -> int:
    """The largest DCT scale divisor (8, 4, 2) that keeps the shorter side >= ``target``; else 1."""
    return next((f for f in JPEG_FACTORS if _keeps(width, height, f, target)), 1)


def j2k_extent(width: int, height: int, factor: int) -> Extent:
    """Where a ``width`` x ``height`` image lies on its low-pass band at 1/``factor``.

    Sample ``j`` is centred on full-resolution pixel ``factor * j``, so the image's left
    edge is ``(1 - 1 / factor) / 2`` of a sample to the right of the array's.
    """
    start = (1.0 - 1.0 / factor) / 2.0
    return (start, start, start + width / factor, start + height / factor)


def jpeg_extent(width: int, height: int, factor: int) -> Extent:
    """Where a ``width`` x ``height`` image lies on its DCT-scaled decode (block means)."""
    return (0.0, 0.0, width / factor, height / factor)


def decode_j2k(frame: bytes, levels: int, coding: J2KCoding, expected: tuple[int, int]) -> np.ndarray:
    """The stored values of a one-component codestream with ``levels`` levels discarded.

    Integers as pydicom returns them (unsigned, or signed when the codestream is); raises
    (any exception) when OpenJPEG fails or the decoded size is not ``expected`` (w, h).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(frame), formats=["JPEG2000"])
    if not isinstance(image, Jpeg2KImageFile) or image.mode not in ("L", "I;16"):
        raise ValueError("not a one-component JPEG 2000 codestream")
    image.reduce = levels
    # Pillow's load() sizes the reduced image as each side / 2**levels rounded half up;
    # OpenJPEG's reduced tiles end at the side / 2**levels rounded up, and where the two
    # differ (a side of 1841 at 1/4: 460 against 461) Pillow rejects the tiles as "broken
    # data stream". Hand load() a size that it rounds to OpenJPEG's; the size check below
    # catches any Pillow that sizes the image another way (the caller then decodes in full).
    power = 1 << levels
    image._size = (expected[0] * power, expected[1] * power)
    image.load()
    if image.size != expected:
        raise ValueError(f"decoded at {image.size}, expected {expected}")
    # Pillow stores N-bit samples in 8 or 16 bits, shifted up and level-shifted to unsigned
    # when signed (Jpeg2KDecode.c j2ku_gray_l / j2ku_gray_i); undo both, as pydicom does.
    container = 8 if image.mode == "L" else 16
    values = np.asarray(image).astype(np.int32)
    if coding.signed:
        values -= 1 << (container - 1)
    values >>= container - coding.precision
    kind = "i" if coding.signed else "u"
    return values.astype(f"{kind}{container // 8}")


def open_jpeg(frame: bytes) -> JpegImagePlugin.JpegImageFile:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(frame), formats=["JPEG"])
    if not isinstance(image, JpegImagePlugin.JpegImageFile):
        raise ValueError("not a JPEG codestream")
    return image


def draft_jpeg(image: JpegImagePlugin.JpegImageFile, target: int) -> int:
    """Make an opened, not yet loaded JPEG decode at 1/factor; returns the factor (1: none).

    The requested size is each side floor-divided by the factor, so that Pillow's own
    choice (the largest of 8, 4, 2 that each side divided by the request reaches) is it.
    """
    width, height = image.size
    factor = jpeg_factor(width, height, target)
    if factor == 1:
        return 1
    image.draft(None, (width // factor, height // factor))
    if image.size != (_reduced_side(width, factor), _reduced_side(height, factor)):
        raise ValueError(f"libjpeg scaled to {image.size}, not 1/{factor} of {width} x {height}")
    return factor


#: EXIF orientations that swap width and height (Pillow's exif_transpose).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def oriented_extent(extent: Extent, size: tuple[int, int], orientation: int) -> Extent:
    """``extent`` on an array of ``size`` (w, h) after ``ImageOps.exif_transpose``'s transform.

    Orientation 2 flips left-right, 3 rotates 180 degrees, 4 flips top-bottom, 5 transposes,
    6 rotates 90 degrees clockwise, 7 transverses, 8 rotates 90 degrees anticlockwise;
    other values leave the image as it is.
    """
    width, height = size
    left, top, right, bottom = extent
    corners = [(left, top), (right, bottom)]
    moves = {
        2: lambda x, y: (width - x, y),
        3: lambda x, y: (width - x, height - y),
        4: lambda x, y: (x, height - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (height - y, x),
        7: lambda x, y: (height - y, width - x),
        8: lambda x, y: (y, width - x),
    }
    move = moves.get(orientation)
    if move is None:
        return extent
    (x0, y0), (x1, y1) = (move(x, y) for x, y in corners)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def swaps_sides(orientation: int) -> bool:
    return orientation in _SWAPPING_ORIENTATIONS
