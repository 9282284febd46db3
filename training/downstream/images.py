"""Image data sets for downstream work: decode with the core decoder, then plain or augmented views.

``FileViews`` decodes each file (``cxrmsn.imaging.decode``) and returns its plain view plus
``copies`` augmented ones; an undecodable file yields no views and is reported, not fatal.
``CachedViews`` reads the uint8 image cache of ``training.data.cache`` (squares of the
checkpoint's ``resize``) for fine-tuning epochs, where decoding every image every epoch would
dominate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrmsn.errors import DecodeError
from cxrmsn.imaging import decode
from cxrmsn.preprocess import PreprocessConfig, preprocess
from training.downstream.augment import plain_view, training_view, view_rng
from training.downstream.config import AugmentConfig

Item = tuple[int, torch.Tensor]


class FileViews(Dataset[Item]):
    """Item i: (i, views [1 + copies, 3, crop, crop]); an undecodable file gives [0, ...]."""

    def __init__(
        self,
        paths: Sequence[Path],
        preprocess_config: PreprocessConfig,
        *,
        augment: AugmentConfig | None = None,
        copies: int = 0,
        seed: int = 0,
    ) -> None:
        if copies and augment is None:
            raise ValueError(f"copies={copies} needs an augmentation config")
        self.paths = list(paths)
        self.config = preprocess_config
        self.augment = augment
        self.copies = copies
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        try:
            # reduced where the codec can, as serving decodes (the augmented views ignore the
            # sub-pixel extent: their random affine moves far more)
            decoded = decode(self.paths[index].read_bytes(), min_size=self.config.decode_min_side())
        except (DecodeError, OSError):
            return index, torch.zeros(0, 3, self.config.crop, self.config.crop)
        pixels = decoded.pixels
        views = [plain_view(pixels, self.config, decoded.extent)]
        if self.augment is not None:
            views += [
                training_view(pixels, self.config, self.augment, view_rng(self.seed, index, copy))
                for copy in range(self.copies)
            ]
        return index, torch.from_numpy(np.stack(views))


class CachedViews(Dataset[tuple[torch.Tensor, int]]):
    """Item i: (view [3, crop, crop], i) from cached uint8 squares; augmented when ``augment``."""

    def __init__(
        self,
        images: np.ndarray,
        indices: np.ndarray,
        preprocess_config: PreprocessConfig,
        *,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        side = preprocess_config.resize
        if images.ndim != 3 or images.shape[1:] != (side, side):
            raise ValueError(f"the cache must hold {side} x {side} images, got {images.shape}")
        self.images = images
        self.indices = indices
        self.config = preprocess_config
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        grey = np.asarray(self.images[self.indices[item]], dtype=np.float32) / 255.0
        if self.augment is None:
            view = preprocess(grey, self.config)  # the square is already resize x resize: crop only
        else:
            rng = view_rng(self.seed, int(self.indices[item]), 0, self.epoch)
            view = training_view(grey, self.config, self.augment, rng)
        return torch.from_numpy(view), item


def collate_views(batch: list[Item]) -> tuple[list[int], list[int], torch.Tensor]:
    """All indices of a batch, the decodable ones, and their views stacked [n, V, 3, S, S]."""
    decoded = [(index, views) for index, views in batch if len(views)]
    stacked = torch.stack([views for _, views in decoded]) if decoded else torch.zeros(0)
    return [index for index, _ in batch], [index for index, _ in decoded], stacked
