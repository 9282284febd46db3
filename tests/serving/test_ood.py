"""The out-of-distribution measurement's pieces (``recipes.ood_measure``, issue 20 items 1-2).

These keep the measurement that chose the guard's score honest: every generated set decodes
through serving's own path, and the scores separate what they should. The shipped guard is
tested in tests/export/test_ood_guard.py and tests/serving/test_ood_guard.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxrmsn.errors import DecodeError
from cxrmsn.preprocess import PreprocessConfig
from recipes.ood_measure import (
    Mahalanobis,
    NearestNeighbours,
    gradient_images,
    natural_photos,
    noise_images,
    text_pages,
)
from serving.predictor import prepare_image

SMALL = PreprocessConfig(resize=64, crop=64)


@pytest.mark.parametrize("make", [noise_images, gradient_images, text_pages, natural_photos])
def test_generated_sets_decode_through_the_serving_path(make: object) -> None:
    rng = np.random.default_rng(0)
    decoded = 0
    for data in make(4, rng):  # type: ignore[operator]
        try:
            prepared = prepare_image(data, SMALL)
        except DecodeError:
            continue
        assert prepared.model_input.shape == (3, 64, 64)
        decoded += 1
    assert decoded >= 3


def test_the_scores_rank_far_points_above_near_ones() -> None:
    rng = np.random.default_rng(0)
    centre = np.r_[5.0, np.zeros(15)]
    train = centre + rng.normal(0, 1, (500, 16))
    near = centre + rng.normal(0, 1, (50, 16))
    far = -centre + rng.normal(0, 1, (50, 16))  # the other way: far in distance and in angle
    for score in (Mahalanobis(train), NearestNeighbours(train)):
        assert np.median(score(far)) > np.percentile(score(near), 99)
