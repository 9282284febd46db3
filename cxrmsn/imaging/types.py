"""What the decoder returns and the limits it enforces."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DecodeLimits:
    """Guards applied to every input before and after decoding."""

    max_pixels: int = 40_000_000  # about 6300 x 6300; the largest chest detectors are ~4300 x 4300
    min_side: int = 16
    max_aspect_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")
        if self.max_aspect_ratio < 1.0:
            raise ValueError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")


@dataclass(frozen=True)
class ImageInfo:
    """Facts about a decoded input that are safe to log and return.

    Holds no patient identifiers: only format facts, Modality, ViewPosition and the
    study/series/instance UIDs (which a PACS needs to file results).
    """

    format: str  # "dicom", "png" or "jpeg"
    width: int
    height: int
    photometric: str  # DICOM vocabulary: MONOCHROME1, MONOCHROME2, RGB, PALETTE COLOR
    bits_stored: int
    modality: str | None = None
    view_position: str | None = None
    transfer_syntax_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    #: 1: decoded at full resolution; 2, 4, 8 ...: decoded at 1/factor of ``width`` and
    #: ``height`` (JPEG 2000 resolution levels, JPEG DCT scaling), which stay the image's size.
    decode_reduction: int = 1

    def to_dict(self) -> dict[str, object]:
        info = asdict(self)
        info["warnings"] = list(self.warnings)
        return info


@dataclass(frozen=True)
class DecodedImage:
    """A grey-scale image as float32 in [0, 1], 0 black and 1 white (bone bright)."""

    pixels: np.ndarray  # float32, shape (height, width), or smaller when decoded reduced
    info: ImageInfo
    #: With a reduced decode (``info.decode_reduction`` > 1): the region (left, top, right,
    #: bottom) of ``pixels``, in its pixel units, that the whole image covers. It can differ
    #: from the array's bounds by under a pixel (the codec's sample grid and rounding up);
    #: ``cxrmsn.preprocess.preprocess(pixels, config, extent=extent)`` resamples from it so
    #: the model input lines up with the full-resolution path's. None at full resolution.
    extent: tuple[float, float, float, float] | None = None
    #: ``decode(..., keep_header=True)`` of a DICOM: its parsed data set without the pixel data
    #: (a ``pydicom.Dataset``), so that DICOM output never parses the upload a second time.
    header: Any = None
