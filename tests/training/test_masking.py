"""Patch dropping: how many are kept, per-sample versus per-batch masks, CLS always kept."""

from __future__ import annotations

import pytest
import torch

from training.msn.masking import drop_patches, num_kept, sample_keep_indices


@pytest.mark.parametrize(
    ("patches", "ratio", "kept"), [(196, 0.15, 166), (36, 0.15, 30), (16, 0.15, 13), (4, 0.0, 4)]
)
def test_num_kept_is_floor_of_the_kept_fraction(patches: int, ratio: float, kept: int) -> None:
    assert num_kept(patches, ratio) == kept


@pytest.mark.parametrize(("patches", "ratio"), [(0, 0.1), (10, 1.0), (10, -0.1)])
def test_num_kept_rejects_bad_input(patches: int, ratio: float) -> None:
    with pytest.raises(ValueError):
        num_kept(patches, ratio)


def test_per_sample_masks_differ_and_hold_distinct_valid_indices() -> None:
    keep = sample_keep_indices(8, 36, 0.15, per_sample=True, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (8, 30) and keep.dtype == torch.long
    assert int(keep.min()) >= 0 and int(keep.max()) < 36
    assert all(len(set(row.tolist())) == 30 for row in keep)
    assert len({tuple(sorted(row.tolist())) for row in keep}) > 1


def test_per_batch_mask_is_shared_by_every_sample() -> None:
    keep = sample_keep_indices(5, 196, 0.15, per_sample=False, generator=torch.Generator().manual_seed(1))
    assert keep.shape == (5, 166)
    assert all(torch.equal(row, keep[0]) for row in keep)
    assert len(set(keep[0].tolist())) == 166


def test_masks_follow_the_generator() -> None:
    def draw(seed: int) -> torch.Tensor:
        return sample_keep_indices(
            3, 16, 0.25, per_sample=True, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))


def test_drop_patches_keeps_cls_and_the_chosen_tokens() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # CLS + 4 patches
    keep = torch.tensor([[3, 0], [1, 2]])
    dropped = drop_patches(tokens, keep)
    assert dropped.shape == (2, 3, 3)
    assert torch.equal(dropped[:, 0], tokens[:, 0])
    assert torch.equal(dropped[0, 1:], tokens[0, [4, 1]])
    assert torch.equal(dropped[1, 1:], tokens[1, [2, 3]])


def test_drop_patches_rejects_a_keep_of_another_batch() -> None:
    with pytest.raises(ValueError):
        drop_patches(torch.zeros(2, 5, 3), torch.zeros(3, 2, dtype=torch.long))
