"""The anchor and target networks around the core encoder."""

from __future__ import annotations

import pytest
import torch

from cxrmsn.checkpoint import load_state_strictly
from cxrmsn.model import create_encoder
from training.msn.masking import sample_keep_indices
from training.msn.model import MSNAnchor, encode_cls, num_patches


@pytest.fixture
def anchor() -> MSNAnchor:
    torch.manual_seed(0)
    return MSNAnchor("vit_nano_patch16_224", num_prototypes=16, ehr_dim=3)


def test_unmasked_cls_equals_timm_forward(anchor: MSNAnchor) -> None:
    images = torch.randn(2, 3, 64, 64)
    encoder = anchor.encoder.eval()
    expected = encoder.forward_head(encoder.forward_features(images), pre_logits=True)
    assert torch.allclose(encode_cls(encoder, images), expected, atol=1e-6)
    keep_all = torch.arange(16).expand(2, 16)
    assert torch.allclose(encode_cls(encoder, images, keep_all), expected, atol=1e-5)


def test_masking_changes_the_embedding(anchor: MSNAnchor) -> None:
    images = torch.randn(2, 3, 64, 64)
    keep = sample_keep_indices(2, 16, 0.5, per_sample=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(
        encode_cls(anchor.encoder.eval(), images, keep), encode_cls(anchor.encoder, images)
    )


def test_anchor_forward_shapes_with_two_view_sizes(anchor: MSNAnchor) -> None:
    rand, focal = torch.randn(2 * 1, 3, 64, 64), torch.randn(2 * 3, 3, 32, 32)
    keep = sample_keep_indices(2, num_patches(anchor.encoder, 64), 0.15, per_sample=True)
    z, prototypes = anchor([rand, focal], [keep, None], torch.rand(2, 3))
    assert z.shape == (8, 64) and prototypes.shape == (16, 64)
    assert prototypes is anchor.prototypes


def test_vanilla_model_has_no_ehr_branch_and_refuses_ehr() -> None:
    vanilla = MSNAnchor("vit_nano_patch16_224", num_prototypes=4)
    assert vanilla.fusion is None
    with pytest.raises(ValueError):
        vanilla([torch.randn(2, 3, 32, 32)], [None], torch.rand(2, 3))


def test_multimodal_model_requires_ehr(anchor: MSNAnchor) -> None:
    with pytest.raises(ValueError):
        anchor([torch.randn(2, 3, 32, 32)], [None])


def test_target_encoder_loads_strictly_into_the_core_encoder(anchor: MSNAnchor) -> None:
    target = anchor.make_target()
    encoder = create_encoder("vit_nano_patch16_224")
    load_state_strictly(encoder, target.encoder.state_dict(), source="test")
    images = torch.randn(1, 3, 224, 224)
    assert torch.allclose(encoder.eval()(images), target.encoder.eval()(images), atol=1e-6)


def test_view_size_must_be_a_multiple_of_the_patch(anchor: MSNAnchor) -> None:
    with pytest.raises(ValueError):
        num_patches(anchor.encoder, 40)
