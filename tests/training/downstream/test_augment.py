"""Views: the plain view is the core's preprocess; training views are seeded and do what they say."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmsn.preprocess import DEFAULT_PREPROCESS, PreprocessConfig, preprocess
from tests.helpers import chest_like_picture
from training.downstream.augment import plain_view, training_view, view_rng
from training.downstream.config import AugmentConfig

PIXELS = chest_like_picture(300, 260, seed=4).astype(np.float32) / 255.0


def test_plain_view_is_the_inference_preprocessing() -> None:
    assert np.array_equal(plain_view(PIXELS, DEFAULT_PREPROCESS), preprocess(PIXELS, DEFAULT_PREPROCESS))


def test_training_views_are_seeded_and_vary() -> None:
    augment = AugmentConfig()
    first = training_view(PIXELS, DEFAULT_PREPROCESS, augment, view_rng(0, 5, 1))
    again = training_view(PIXELS, DEFAULT_PREPROCESS, augment, view_rng(0, 5, 1))
    other = training_view(PIXELS, DEFAULT_PREPROCESS, augment, view_rng(0, 5, 2))
    assert first.shape == (3, 224, 224) and first.dtype == np.float32
    assert np.array_equal(first, again) and not np.allclose(first, other)
    assert not np.allclose(first, plain_view(PIXELS, DEFAULT_PREPROCESS))


def test_identity_affine_with_a_sure_flip_is_the_mirrored_plain_view() -> None:
    augment = AugmentConfig(flip_p=1.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    for config in (DEFAULT_PREPROCESS, PreprocessConfig(resize=256, crop=224)):
        view = training_view(PIXELS, config, augment, view_rng(0, 0, 0))
        np.testing.assert_allclose(
            view, plain_view(PIXELS, config)[:, :, ::-1], atol=1e-4
        )  # resampling rounding


def test_rotation_moves_content_and_fills_black() -> None:
    augment = AugmentConfig(flip_p=0.0, degrees=45.0, translate=0.0, scale=(0.85, 0.85))
    view = training_view(np.ones((224, 224), np.float32), DEFAULT_PREPROCESS, augment, view_rng(1, 0, 0))
    black = (0.0 - DEFAULT_PREPROCESS.mean[0]) / DEFAULT_PREPROCESS.std[0]
    assert view[0, 0, 0] == pytest.approx(black, abs=1e-4)  # zoomed out: the corner is fill
