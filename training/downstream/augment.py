"""The views a downstream model sees: the plain inference view and the paper's training augmentation.

- Plain view: ``cxrmsn.preprocess.preprocess`` of the decoded image, the very function export
  and serving call (resize the shorter side to ``resize``, centre-crop ``crop``, normalise).
- Training view (the paper's linear evaluation, after its code's ``Resize(256)``,
  ``RandomHorizontalFlip``, ``RandomAffine(degrees=45, translate=(0.15, 0.15),
  scale=(0.85, 1.15))``, ``CenterCrop(224)``): the core's ``resize_and_crop`` to a
  ``resize`` x ``resize`` square, a horizontal flip with probability ``flip_p``, a random
  affine map (bilinear, black fill), a centre crop of ``crop`` and the core's ``normalise``.
  The resize and crop sizes are the checkpoint's preprocessing, so training and inference
  see the same scale.

Randomness comes from a ``numpy.random.Generator`` the caller seeds per image and copy, so
the augmented copies do not depend on worker count or order.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cxrmsn.preprocess import PreprocessConfig, normalise, preprocess, resize_and_crop
from training.downstream.config import AugmentConfig


def plain_view(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Grey float32 [H, W] in [0, 1] -> float32 [3, crop, crop]: exactly the inference input."""
    return preprocess(pixels, config)


def training_view(
    pixels: np.ndarray, config: PreprocessConfig, augment: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Grey float32 [H, W] in [0, 1] -> one augmented float32 [3, crop, crop]."""
    square = resize_and_crop(pixels, replace(config, crop=config.resize))
    image = torch.from_numpy(np.array(square, dtype=np.float32))[None]  # a writable copy
    if rng.random() < augment.flip_p:
        image = TF.horizontal_flip(image)
    shift = augment.translate * config.resize
    image = TF.affine(
        image,
        angle=float(rng.uniform(-augment.degrees, augment.degrees)),
        translate=[round(float(rng.uniform(-shift, shift))), round(float(rng.uniform(-shift, shift)))],
        scale=float(rng.uniform(*augment.scale)),
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=0.0,
    )
    cropped = TF.center_crop(image, [config.crop, config.crop])
    return normalise(cropped[0].clamp(0, 1).numpy(), config)


def view_rng(seed: int, image: int, copy: int, epoch: int = 0) -> np.random.Generator:
    """The generator of one augmented copy of one image (independent of worker order)."""
    return np.random.default_rng([seed, image, copy, epoch])
