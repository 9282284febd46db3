"""The one preprocessing of the project: grey image in [0, 1] -> model input.

Resize so the shorter side is ``resize`` px (bilinear, antialiased when shrinking),
centre-crop ``crop`` x ``crop``, repeat to 3 channels and normalise with the ImageNet
mean and std. numpy and Pillow only, so serving needs no torch. Training's evaluation
transform, export's parity checks and the service all call ``preprocess``.

Callers decode no more than this needs: ``decode(data, min_size=config.decode_min_side())``
may return a reduced-resolution image (JPEG 2000, JPEG), and ``preprocess(decoded.pixels,
config, extent=decoded.extent)`` resamples it onto the same output grid as the full image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

#: How much larger than ``resize`` a reduced-resolution decode stays (``decode_min_side``).
#: A codec's reduced image is already low-pass filtered (the wavelet's low band; the mean of
#: each DCT block), so a decode at exactly ``resize`` px is filtered differently from the
#: full image shrunk by Pillow: on 219 real chest X-rays of ../shared/data re-encoded as
#: JPEG 2000 and JPEG, decoding at >= 2 x ``resize`` instead of >= ``resize`` cut the mean
#: model-input difference from the full decode by 2-3x (JPEG 2000 0.025 -> 0.012, JPEG
#: 0.012 -> 0.004) and the largest probability change of the bundled model from 0.14 to
#: 0.06, while a 2048 x 2500 JPEG 2000 still decodes and preprocesses 16x faster (docs/benchmarks.md).
DECODE_OVERSAMPLING = 2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    resize: int = 224  # shorter side after resizing, px
    crop: int = 224  # side of the centre crop, px
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.crop < 1 or self.resize < self.crop:
            raise ValueError(f"need resize >= crop >= 1, got resize={self.resize}, crop={self.crop}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values, std > 0; got {self.mean}, {self.std}")

    def decode_min_side(self) -> int:
        """The shorter side, px, to ask the decoder for: ``DECODE_OVERSAMPLING`` x ``resize``.

        ``cxrmsn.imaging.decode(data, min_size=config.decode_min_side())`` decodes JPEG 2000
        and JPEG at the smallest resolution that keeps it; ``preprocess`` then shrinks that
        by at least 2, so its own antialiasing filter, not the codec's, shapes the input.
        """
        return DECODE_OVERSAMPLING * self.resize

    def to_dict(self) -> dict[str, object]:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> PreprocessConfig:
        known = {"resize", "crop", "mean", "std"}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(
            resize=int(values["resize"]),  # type: ignore[call-overload]
            crop=int(values["crop"]),  # type: ignore[call-overload]
            mean=tuple(float(v) for v in values["mean"]),  # type: ignore[arg-type, attr-defined]
            std=tuple(float(v) for v in values["std"]),  # type: ignore[arg-type, attr-defined]
        )


DEFAULT_PREPROCESS = PreprocessConfig()


Extent = tuple[float, float, float, float]


def resize_and_crop(
    image: np.ndarray, config: PreprocessConfig = DEFAULT_PREPROCESS, *, extent: Extent | None = None
) -> np.ndarray:
    """Grey float32 [H, W] in [0, 1] -> grey float32 [crop, crop] in [0, 1].

    ``extent``: the image was decoded at a reduced resolution (``DecodedImage.extent``): the
    region (left, top, right, bottom) of ``image``, in its pixel units, that the whole picture
    covers. The output size and crop are then computed from that region, as from the full
    image, and it is resampled from exactly that region.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {image.shape}")
    height, width = image.shape
    if extent is None:
        source_width, source_height = float(width), float(height)
    else:
        source_width, source_height = extent[2] - extent[0], extent[3] - extent[1]
    scale = config.resize / min(source_height, source_width)
    new_width = max(config.crop, round(source_width * scale))
    new_height = max(config.crop, round(source_height * scale))
    grey = np.ascontiguousarray(image, dtype=np.float32)
    if extent is not None:
        grey = _resample(grey, extent, (new_width, new_height))
    elif (new_width, new_height) != (width, height):
        resized = Image.fromarray(grey, mode="F").resize((new_width, new_height), Image.Resampling.BILINEAR)
        grey = np.asarray(resized, dtype=np.float32)
    top = (new_height - config.crop) // 2
    left = (new_width - config.crop) // 2
    return grey[top : top + config.crop, left : left + config.crop]


def _resample(grey: np.ndarray, extent: Extent, size: tuple[int, int]) -> np.ndarray:
    """``extent`` of ``grey`` resized to ``size`` (bilinear, antialiased when shrinking).

    Where the region reaches past the array (by under a pixel or two: the decoder's grid),
    the edge rows and columns are repeated to cover it.
    """
    left, top, right, bottom = extent
    height, width = grey.shape
    pad_left, pad_top = max(0, math.ceil(-left)), max(0, math.ceil(-top))
    pad_right, pad_bottom = max(0, math.ceil(right - width)), max(0, math.ceil(bottom - height))
    if pad_left or pad_top or pad_right or pad_bottom:
        grey = np.pad(grey, ((pad_top, pad_bottom), (pad_left, pad_right)), mode="edge")
    box = (left + pad_left, top + pad_top, right + pad_left, bottom + pad_top)
    resized = Image.fromarray(grey, mode="F").resize(size, Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.float32)


def normalise(grey: np.ndarray, config: PreprocessConfig = DEFAULT_PREPROCESS) -> np.ndarray:
    """Grey float32 [S, S] in [0, 1] -> float32 [3, S, S], ImageNet-normalised."""
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    inv_std = (1.0 / np.asarray(config.std, dtype=np.float32))[:, None, None]
    return (grey[None, :, :] - mean) * inv_std


def preprocess(
    image: np.ndarray, config: PreprocessConfig = DEFAULT_PREPROCESS, *, extent: Extent | None = None
) -> np.ndarray:
    """Grey float32 [H, W] in [0, 1] -> model input float32 [3, crop, crop].

    ``extent``: ``DecodedImage.extent`` of a reduced-resolution decode (see ``resize_and_crop``).
    """
    return normalise(resize_and_crop(image, config, extent=extent), config)
