"""The views a downstream model sees: the plain inference view and the paper's training augmentation.

- Linear evaluation's preprocessing (``eval_preprocessing``): the paper's ``Resize(256)`` then
  ``CenterCrop(224)``. An encoder checkpoint records its pretraining target view (resize =
  crop = the input size, a no-op centre crop), so linear evaluation and fine-tuning resize the
  shorter side to ``round(crop * 256 / 224)`` (224 -> 256, 64 -> 73) and centre-crop ``crop``.
  That preprocessing is what they train and test with and what they save in the classifier
  checkpoint, so export and serving, which read the checkpoint's preprocessing, compute the
  same view. An encoder whose checkpoint already states resize > crop keeps its own.
- Plain view: ``cxrmsn.preprocess.preprocess`` of the decoded image, the very function export
  and serving call (resize the shorter side to ``resize``, centre-crop ``crop``, normalise).
- Training view (the paper's linear evaluation, after its code's ``Resize(256)``,
  ``RandomHorizontalFlip``, ``RandomAffine(degrees=45, translate=(0.15, 0.15),
  scale=(0.85, 1.15))``, ``CenterCrop(224)``): the shorter side resized to ``resize`` (the
  aspect ratio kept, bilinear as the core's resize), a horizontal flip with probability
  ``flip_p``, a random affine map (bilinear, black fill; shifts up to ``translate`` of the
  width and of the height, as torchvision's), a centre crop of ``crop`` (placed as the core's
  ``resize_and_crop`` places it) and the core's ``normalise``.

Randomness comes from a ``numpy.random.Generator`` the caller seeds per image and copy, so
the augmented copies do not depend on worker count or order.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cxrmsn.preprocess import Extent, PreprocessConfig, normalise, preprocess
from training.downstream.config import AugmentConfig

PAPER_RESIZE, PAPER_CROP = 256, 224  # the paper's linear-evaluation Resize and CenterCrop


def eval_preprocessing(pretraining: PreprocessConfig, view: str = "paper") -> PreprocessConfig:
    """Linear evaluation's (and fine-tuning's) preprocessing for an encoder pretrained with
    ``pretraining``: the paper's resize-then-centre-crop ratio, 256 / 224, or with
    ``view="pretraining"`` (``augment.eval_view``) the encoder's own view unchanged."""
    if view == "pretraining" or pretraining.resize != pretraining.crop:
        return pretraining
    return replace(pretraining, resize=round(pretraining.crop * PAPER_RESIZE / PAPER_CROP))


def plain_view(pixels: np.ndarray, config: PreprocessConfig, extent: Extent | None = None) -> np.ndarray:
    """Grey float32 [H, W] in [0, 1] -> float32 [3, crop, crop]: exactly the inference input
    (``extent``: ``DecodedImage.extent`` of a reduced decode, as serving passes it)."""
    return preprocess(pixels, config, extent=extent)


def resize_shorter_side(pixels: np.ndarray, side: int) -> np.ndarray:
    """Grey float32 [H, W] -> the shorter side at ``side`` px, aspect kept (the core's resize)."""
    height, width = pixels.shape
    scale = side / min(height, width)
    new_height, new_width = max(side, round(height * scale)), max(side, round(width * scale))
    grey = np.ascontiguousarray(pixels, dtype=np.float32)
    if (new_height, new_width) == (height, width):
        return grey
    resized = Image.fromarray(grey, mode="F").resize((new_width, new_height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def training_view(
    pixels: np.ndarray, config: PreprocessConfig, augment: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Grey float32 [H, W] in [0, 1] -> one augmented float32 [3, crop, crop]."""
    grey = resize_shorter_side(pixels, config.resize)
    image = torch.from_numpy(np.array(grey, dtype=np.float32))[None]  # a writable copy
    if rng.random() < augment.flip_p:
        image = TF.horizontal_flip(image)
    height, width = grey.shape
    angle = float(rng.uniform(-augment.degrees, augment.degrees))
    shift_x, shift_y = augment.translate * width, augment.translate * height
    image = TF.affine(
        image,
        angle=angle,
        translate=[
            round(float(rng.uniform(-shift_x, shift_x))),
            round(float(rng.uniform(-shift_y, shift_y))),
        ],
        scale=float(rng.uniform(*augment.scale)),
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=0.0,
    )
    top, left = (height - config.crop) // 2, (width - config.crop) // 2  # the core's centre crop
    cropped = image[0, top : top + config.crop, left : left + config.crop]
    return normalise(cropped.clamp(0, 1).numpy(), config)


def view_rng(seed: int, image: int, copy: int, epoch: int = 0) -> np.random.Generator:
    """The generator of one augmented copy of one image (independent of worker order)."""
    return np.random.default_rng([seed, image, copy, epoch])
