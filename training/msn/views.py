"""MSN views of one cached grey image: a target view and the anchor views.

Paper (REFERENCE section 1): one unmasked target view at 224 px; anchor views = 1 random
view at 224 px + 10 focal views at 96 px. Random resized crop (224 px views: scale
0.3-1.0; 96 px focal views: 0.05-0.3; aspect ratio 3/4-4/3) and horizontal flip (p = 0.5);
no colour jitter and no blur (grey-scale images; blur can hide disease). Each view is
repeated to 3 channels and normalised by the core's ``cxrmsn.preprocess.normalise`` with
the same mean/std as inference.

Randomness comes from an optional ``torch.Generator``, else torch's global generator
(which DataLoader seeds per worker).

``MultiViewTransform(..., uint8=True)`` (what pretraining's loader uses) ships each view
as the resized uint8 grey crop [1, S, S] (the same crops and flips, drawn in the same
order): about 0.19 MB per image at the paper's views instead of 2.3 MB of normalised
float32, through the loader's shared memory and the host-to-device copy. ``to_model_input``
repeats and normalises them on the device, as ``normalise`` does on the host.
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
    target: torch.Tensor  # [3, target_size, target_size] (uint8: [1, ...])
    rand: torch.Tensor  # [rand_views, 3, rand_size, rand_size] (uint8: [rand_views, 1, ...])
    focal: torch.Tensor  # [focal_views, 3, focal_size, focal_size] (uint8: [focal_views, 1, ...])


def to_model_input(views: torch.Tensor, preprocess: PreprocessConfig = DEFAULT_PREPROCESS) -> torch.Tensor:
    """uint8 grey views [..., 1, S, S] -> normalised float32 [..., 3, S, S] where they are (the
    device); float views (already normalised) are returned unchanged. Python scalars only: a
    mean/std tensor made for a CUDA device would be a blocking host-to-device copy."""
    if views.dtype != torch.uint8:
        return views
    grey = views.float()
    channels = [
        (grey - 255.0 * mean) * (1.0 / (255.0 * std))
        for mean, std in zip(preprocess.mean, preprocess.std, strict=True)
    ]
    return torch.cat(channels, dim=-3)


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
    """Grey float [1, H, W] in [0, 1] -> normalised [3, size, size]; grey uint8 [1, H, W] ->
    the uint8 view [1, size, size] (normalised later by ``to_model_input``)."""
    top, left, h, w = sample_crop_box(grey.shape[-2], grey.shape[-1], scale, generator=generator)
    view = TF.resized_crop(grey, top, left, h, w, [size, size], antialias=True)
    if float(torch.rand(1, generator=generator)) < flip_p:
        view = TF.horizontal_flip(view)
    if view.dtype == torch.uint8:
        return view.contiguous()
    normalised = normalise(view[0].clamp(0, 1).numpy(), preprocess)
    return torch.from_numpy(normalised)


class MultiViewTransform:
    """A cached uint8 [H, W] image -> ``MultiView``."""

    def __init__(
        self, config: ViewsConfig, *, preprocess: PreprocessConfig = DEFAULT_PREPROCESS, uint8: bool = False
    ) -> None:
        self.config = config
        self.preprocess = preprocess
        self.uint8 = uint8  # ship uint8 grey views; ``to_model_input`` normalises them

    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> MultiView:
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [H, W] image, got {image.dtype} {image.shape}")
        if self.uint8:
            grey = torch.from_numpy(np.ascontiguousarray(image))[None]
        else:
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
            return (
                torch.zeros(0, 1, size, size, dtype=torch.uint8)
                if self.uint8
                else torch.zeros(0, 3, size, size)
            )
        return torch.stack([self._view(grey, size, scale, generator) for _ in range(count)])
