"""The pretraining data set: cached images to views, with each image's EHR vector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import chest_like_picture
from training.config import ViewsConfig
from training.data.dataset import PretrainDataset
from training.msn.views import MultiViewTransform

VIEWS = ViewsConfig(target_size=32, rand_size=32, focal_views=3, focal_size=16)


def test_items_hold_views_and_the_rows_ehr() -> None:
    images = np.stack([chest_like_picture(40, 40, seed=i) for i in range(4)])
    ehr = np.arange(6, dtype=np.float32).reshape(2, 3)
    dataset = PretrainDataset(images, np.array([3, 1]), MultiViewTransform(VIEWS), ehr)
    assert len(dataset) == 2 and dataset.ehr_dim == 3
    item = dataset[1]
    assert item["target"].shape == (3, 32, 32) and item["rand"].shape == (1, 3, 32, 32)
    assert item["focal"].shape == (3, 3, 16, 16)
    assert torch.equal(item["ehr"], torch.tensor([3.0, 4.0, 5.0]))
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    assert batch["focal"].shape == (2, 3, 3, 16, 16) and batch["ehr"].shape == (2, 3)


def test_without_ehr_items_carry_an_empty_vector() -> None:
    dataset = PretrainDataset(np.zeros((1, 40, 40), np.uint8), np.array([0]), MultiViewTransform(VIEWS))
    assert dataset.ehr_dim == 0 and dataset[0]["ehr"].shape == (0,)


def test_inconsistent_inputs_are_refused() -> None:
    images = np.zeros((2, 40, 40), np.uint8)
    with pytest.raises(ValueError):
        PretrainDataset(images, np.array([0, 2]), MultiViewTransform(VIEWS))
    with pytest.raises(ValueError):
        PretrainDataset(images, np.array([0, 1]), MultiViewTransform(VIEWS), np.zeros((3, 2), np.float32))
