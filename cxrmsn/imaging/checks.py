"""Checks shared by every format: size limits before decoding, content after."""

from __future__ import annotations

import numpy as np

from cxrmsn.errors import ImageTooLargeError, NotSingleGreyImageError
from cxrmsn.imaging.types import DecodeLimits

#: The most characters of a header value an error or warning message quotes.
ECHO_LIMIT = 64


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A header value made safe to quote in a message: printable ASCII, at most ``limit`` chars.

    Other characters become "?"; a longer value is cut to ``limit`` characters plus "...".
    """
    text = "".join(c if " " <= c <= "~" else "?" for c in str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def non_finite_error(stage: str) -> NotSingleGreyImageError:
    """The 422 for rescale, LUT or window arithmetic that leaves the float32 range."""
    return NotSingleGreyImageError(
        f"{stage} gives values outside the float32 range (infinite or NaN): "
        "the file's rescale, LUT or window values are not usable",
        code="non_finite_pixels",
    )


def check_finite(values: np.ndarray, stage: str) -> None:
    """Refuse non-finite intermediate values (overflowing rescale, LUT or window arithmetic)."""
    if not np.isfinite(values).all():
        raise non_finite_error(stage)


def check_declared_size(width: int, height: int, limits: DecodeLimits) -> None:
    """Reject sizes from a header before any pixel is decoded (decompression-bomb guard)."""
    if width <= 0 or height <= 0:
        raise NotSingleGreyImageError(
            f"image has {width} x {height} pixels: nothing to classify", code="image_too_small"
        )
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image declares {width} x {height} = {width * height:,} pixels, "
            f"more than the limit of {limits.max_pixels:,}"
        )
    if min(width, height) < limits.min_side:
        raise NotSingleGreyImageError(
            f"image is {width} x {height} px; each side must be at least {limits.min_side} px",
            code="image_too_small",
        )
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise NotSingleGreyImageError(
            f"image is {width} x {height} px, an aspect ratio over "
            f"{limits.max_aspect_ratio:g}: not a chest radiograph",
            code="bad_aspect_ratio",
        )


def check_not_blank(pixels: np.ndarray) -> None:
    if pixels.size == 0 or float(pixels.max()) == float(pixels.min()):
        raise NotSingleGreyImageError(
            "every pixel has the same value: nothing to classify", code="blank_image"
        )
