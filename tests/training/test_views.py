"""MSN views: sizes, crop scales, flips, no colour change, the core's normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrmsn.preprocess import DEFAULT_PREPROCESS, normalise
from tests.helpers import chest_like_picture
from training.config import ViewsConfig
from training.msn.views import MultiViewTransform, random_view, sample_crop_box


def test_paper_views_have_the_paper_sizes() -> None:
    views = MultiViewTransform(ViewsConfig())(chest_like_picture(256, 256), torch.Generator().manual_seed(0))
    assert views.target.shape == (3, 224, 224)
    assert views.rand.shape == (1, 3, 224, 224)
    assert views.focal.shape == (10, 3, 96, 96)


def test_counts_and_sizes_are_configurable() -> None:
    config = ViewsConfig(target_size=64, rand_views=2, rand_size=48, focal_views=0, focal_size=32)
    views = MultiViewTransform(config)(chest_like_picture(80, 80), torch.Generator().manual_seed(0))
    assert views.target.shape == (3, 64, 64) and views.rand.shape == (2, 3, 48, 48)
    assert views.focal.shape == (0, 3, 32, 32)


@pytest.mark.parametrize("scale", [(0.3, 1.0), (0.05, 0.3)])
def test_crop_boxes_lie_inside_and_cover_the_scale_range(scale: tuple[float, float]) -> None:
    generator = torch.Generator().manual_seed(0)
    fractions = []
    for _ in range(300):
        top, left, h, w = sample_crop_box(200, 160, scale, generator=generator)
        assert top >= 0 and top + h <= 200 and left >= 0 and left + w <= 160
        fractions.append(h * w / (200 * 160))
    assert scale[0] * 0.9 <= min(fractions) and max(fractions) <= scale[1] * 1.1
    assert max(fractions) - min(fractions) > (scale[1] - scale[0]) / 2


def test_a_flat_image_stays_flat_and_is_normalised_like_inference() -> None:
    """No colour jitter and no blur: a constant grey gives the core's normalised constant."""
    flat = np.full((64, 64), 128, dtype=np.uint8)
    views = MultiViewTransform(ViewsConfig(target_size=32, rand_size=32, focal_size=16))(flat)
    expected = torch.from_numpy(normalise(np.full((32, 32), 128 / 255, dtype=np.float32), DEFAULT_PREPROCESS))
    assert torch.allclose(views.target, expected, atol=1e-5)
    assert torch.allclose(views.rand[0], expected, atol=1e-5)


def test_flip_probability_one_mirrors_the_crop() -> None:
    grey = torch.linspace(0, 1, 32).repeat(32, 1)[None]  # brighter to the right
    kept = random_view(grey, 32, (1.0, 1.0), flip_p=0.0, generator=torch.Generator().manual_seed(0))
    flipped = random_view(grey, 32, (1.0, 1.0), flip_p=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(flipped, kept.flip(-1), atol=1e-5)
    assert float(kept[0, 0, -1]) > float(kept[0, 0, 0])


def test_views_follow_the_generator() -> None:
    transform = MultiViewTransform(ViewsConfig(target_size=32, rand_size=32, focal_size=16, focal_views=2))
    image = chest_like_picture(64, 64)
    a = transform(image, torch.Generator().manual_seed(5))
    b = transform(image, torch.Generator().manual_seed(5))
    c = transform(image, torch.Generator().manual_seed(6))
    assert torch.equal(a.focal, b.focal) and not torch.equal(a.focal, c.focal)


def test_rejects_float_images() -> None:
    with pytest.raises(ValueError):
        MultiViewTransform(ViewsConfig())(np.zeros((8, 8), dtype=np.float32))
