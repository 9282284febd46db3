"""MSN views of one cached grey image: a target view and the anchor views.

Paper (REFERENCE section 1): one unmasked target view at 224 px; anchor views = 1 random
view at 224 px + 10 focal views at 96 px. Random resized crop (224 px views: scale
0.3-1.0; 96 px focal views: 0.05-0.3; aspect ratio 3/4-4/3) and horizontal flip (p = 0.5);
no colour jitter and no blur (grey-scale images; blur can hide disease). Each view is
repeated to 3 channels and normalised by the core's ``cxrmsn.preprocess.normalise`` with
the same mean/std as inference.

Randomness comes from an optional ``torch.Generator``, else torch's global generator
(which DataLoader seeds per worker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from cxrmsn.preprocess import DEFAULT_PREPROCESS, PreprocessConfig, normalise
from training.config import ViewsConfig

RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class MultiView:
    target: torch.Tensor  # [3, target_size, target_size]
    rand: torch.Tensor  # [rand_views, 3, rand_size, rand_size]
    focal: torch.Tensor  # [focal_views, 3, focal_size, focal_size]


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = RATIO,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area at aspect ``ratio``.

    torchvision's RandomResizedCrop rule: 10 tries, then the largest centred crop in range.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    return _centre_fallback(height, width, ratio)


def _centre_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_view(
    grey: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    *,
    flip_p: float,
    generator: torch.Generator | None = None,
    preprocess: PreprocessConfig = DEFAULT_PREPROCESS,
) -> torch.Tensor:
    """Grey float [1, H, W] in [0, 1] -> normalised [3, size, size]."""
    top, left, h, w = sample_crop_box(grey.shape[-2], grey.shape[-1], scale, generator=generator)
    view = TF.resized_crop(grey, top, left, h, w, [size, size], antialias=True)
    if float(torch.rand(1, generator=generator)) < flip_p:
        view = TF.horizontal_flip(view)
    normalised = normalise(view[0].clamp(0, 1).numpy(), preprocess)
    return torch.from_numpy(normalised)


class MultiViewTransform:
    """A cached uint8 [H, W] image -> ``MultiView``."""

    def __init__(self, config: ViewsConfig, *, preprocess: PreprocessConfig = DEFAULT_PREPROCESS) -> None:
        self.config = config
        self.preprocess = preprocess

    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> MultiView:
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [H, W] image, got {image.dtype} {image.shape}")
        grey = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
        c = self.config
        return MultiView(
            target=self._view(grey, c.target_size, c.target_scale, generator),
            rand=self._views(grey, c.rand_views, c.rand_size, c.rand_scale, generator),
            focal=self._views(grey, c.focal_views, c.focal_size, c.focal_scale, generator),
        )

    def _view(
        self, grey: torch.Tensor, size: int, scale: tuple[float, float], generator: torch.Generator | None
    ) -> torch.Tensor:
        return random_view(
            grey, size, scale, flip_p=self.config.flip_p, generator=generator, preprocess=self.preprocess
        )

    def _views(
        self,
        grey: torch.Tensor,
        count: int,
        size: int,
        scale: tuple[float, float],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if count == 0:
            return torch.zeros(0, 3, size, size)
        return torch.stack([self._view(grey, size, scale, generator) for _ in range(count)])
