"""PNG and JPEG to a grey-scale image in [0, 1].

8- and 16-bit grey, RGB, RGBA, LA and palette images; EXIF orientation applied.
The declared size is checked against the pixel limit before any pixel is decoded.
With a ``target`` side, a JPEG is decoded at 1/2, 1/4 or 1/8 scale (``reduced``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from cxrmsn.errors import CorruptInputError, ImageTooLargeError
from cxrmsn.imaging import reduced
from cxrmsn.imaging.checks import check_declared_size, check_not_blank
from cxrmsn.imaging.jpeg import check_scan_length
from cxrmsn.imaging.types import DecodedImage, DecodeLimits, ImageInfo

# ITU-R BT.601 luma, the weights Pillow's own RGB -> L conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_raster(data: bytes, fmt: str, limits: DecodeLimits, target: int | None = None) -> DecodedImage:
    """``target``: decode a JPEG at a reduced scale whose shorter side stays >= ``target`` px."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = _open(data, fmt)
        check_declared_size(image.width, image.height, limits)
        if fmt == "jpeg":
            check_scan_length(data)
        size, factor, orientation = image.size, 1, 1
        if target is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
            orientation = _orientation(image)
            image, factor = _draft(image, data, target)
        reduced_size = image.size
        image = _load_oriented(image, fmt)
    pixels, photometric, bits, notes = _to_grey(image)
    check_declared_size(pixels.shape[1], pixels.shape[0], limits)
    check_not_blank(pixels)
    width, height = int(pixels.shape[1]), int(pixels.shape[0])
    extent = None
    if factor > 1:
        width, height = size[::-1] if reduced.swaps_sides(orientation) else size
        extent = reduced.oriented_extent(reduced.jpeg_extent(*size, factor), reduced_size, orientation)
    info = ImageInfo(
        format=fmt,
        width=width,
        height=height,
        photometric=photometric,
        bits_stored=bits,
        warnings=tuple(notes),
        decode_reduction=factor,
    )
    return DecodedImage(pixels=pixels, info=info, extent=extent)


def _open(data: bytes, fmt: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[fmt.upper()])
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"the {fmt.upper()} header declares too many pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CorruptInputError(f"the {fmt.upper()} header cannot be read ({type(exc).__name__})") from None


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation ``ImageOps.exif_transpose`` will apply (1 when none or unreadable)."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a broken EXIF block: exif_transpose meets it later and says so
        return 1
    return value if isinstance(value, int) else 1


def _draft(image: JpegImagePlugin.JpegImageFile, data: bytes, target: int) -> tuple[Image.Image, int]:
    """(the image set to decode scaled, the factor) by ``reduced.draft_jpeg``; where that
    fails, the file opened afresh and 1 (full resolution)."""
    try:
        return image, reduced.draft_jpeg(image, target)
    except Exception:  # Pillow refused or misapplied the draft
        return _open(data, "jpeg"), 1


def _load_oriented(image: Image.Image, fmt: str) -> Image.Image:
    try:
        image.load()
        oriented = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"the {fmt.upper()} image has too many pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow says "image file is truncated" or names the broken chunk.
        raise CorruptInputError(
            f"the {fmt.upper()} image data is truncated or corrupt ({type(exc).__name__})"
        ) from None
    return oriented if oriented is not None else image


def _to_grey(image: Image.Image) -> tuple[np.ndarray, str, int, list[str]]:
    notes: list[str] = []
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        raw = np.asarray(image)
        top = 65535.0 if int(raw.max()) <= 65535 else float(raw.max())
        return (raw.astype(np.float32) / top), "MONOCHROME2", 16, notes
    if mode in ("L", "1"):
        return _scale8(np.asarray(image.convert("L"))), "MONOCHROME2", 8, notes
    if mode == "LA":
        return _scale8(np.asarray(image.getchannel("L"))), "MONOCHROME2", 8, notes
    photometric = "PALETTE COLOR" if mode in ("P", "PA") else "RGB"
    if "A" in image.getbands() or (mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if int(alpha.min()) < 255:
            notes.append("transparency ignored")
    rgb = np.asarray(image.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return _scale8(rgb[..., 0]), photometric, 8, notes
    notes.append("colour image converted to grey-scale (ITU-R BT.601 luma)")
    grey = rgb.astype(np.float32) @ _LUMA
    return grey / np.float32(255.0), photometric, 8, notes


def _scale8(grey: np.ndarray) -> np.ndarray:
    return grey.astype(np.float32) / np.float32(255.0)
