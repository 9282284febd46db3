"""The one preprocessing of the project: grey image in [0, 1] -> model input.

Resize so the shorter side is ``resize`` px (bilinear, antialiased when shrinking),
centre-crop ``crop`` x ``crop``, repeat to 3 channels and normalise with the ImageNet
mean and std. numpy and Pillow only, so serving needs no torch. Training's evaluation
transform, export's parity checks and the service all call ``preprocess``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

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


def resize_and_crop(image: np.ndarray, config: PreprocessConfig = DEFAULT_PREPROCESS) -> np.ndarray:
    """Grey float32 [H, W] in [0, 1] -> grey float32 [crop, crop] in [0, 1]."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {image.shape}")
    height, width = image.shape
    scale = config.resize / min(height, width)
    new_width = max(config.crop, round(width * scale))
    new_height = max(config.crop, round(height * scale))
    grey = np.ascontiguousarray(image, dtype=np.float32)
    if (new_width, new_height) != (width, height):
        resized = Image.fromarray(grey, mode="F").resize((new_width, new_height), Image.Resampling.BILINEAR)
        grey = np.asarray(resized, dtype=np.float32)
    top = (new_height - config.crop) // 2
    left = (new_width - config.crop) // 2
    return grey[top : top + config.crop, left : left + config.crop]


def normalise(grey: np.ndarray, config: PreprocessConfig = DEFAULT_PREPROCESS) -> np.ndarray:
    """Grey float32 [S, S] in [0, 1] -> float32 [3, S, S], ImageNet-normalised."""
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    inv_std = (1.0 / np.asarray(config.std, dtype=np.float32))[:, None, None]
    return (grey[None, :, :] - mean) * inv_std


def preprocess(image: np.ndarray, config: PreprocessConfig = DEFAULT_PREPROCESS) -> np.ndarray:
    """Grey float32 [H, W] in [0, 1] -> model input float32 [3, crop, crop]."""
    return normalise(resize_and_crop(image, config), config)
