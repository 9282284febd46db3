"""The classifier: shapes, attention, fused vs unfused kernels."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cxrmsn.model import (
    ARCHITECTURES,
    CXRClassifier,
    cls_attention_weights,
    create_encoder,
    set_fused_attention,
)


@pytest.fixture(scope="module")
def tiny() -> CXRClassifier:
    torch.manual_seed(0)
    return CXRClassifier("vit_tiny_patch16_224").eval()


def test_output_shapes_and_ranges(tiny: CXRClassifier) -> None:
    with torch.no_grad():
        probabilities, attention = tiny(torch.randn(3, 3, 224, 224))
    assert probabilities.shape == (3, 14) and attention.shape == (3, 14, 14)
    assert torch.all((probabilities > 0) & (probabilities < 1))
    assert torch.all(attention >= 0)
    # CLS -> patches only: the CLS -> CLS share is left out, so the sum is just under 1.
    assert torch.all(attention.sum(dim=(1, 2)) <= 1.0 + 1e-6)


def test_attention_rows_sum_to_one_and_match_the_full_attention(tiny: CXRClassifier) -> None:
    images = torch.randn(2, 3, 224, 224)
    encoder = tiny.encoder
    with torch.no_grad():
        tokens = encoder.norm_pre(encoder.patch_drop(encoder._pos_embed(encoder.patch_embed(images))))
        for block in encoder.blocks[:-1]:
            tokens = block(tokens)
        last = encoder.blocks[-1]
        weights = cls_attention_weights(last, tokens)  # [B, heads, N]
        # The full attention matrix, computed the textbook way from the same block.
        attn: Any = last.attn
        qkv = attn.qkv(last.get_submodule("norm1")(tokens)).reshape(2, 197, 3, attn.num_heads, attn.head_dim)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        full = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, heads, N, N]
    assert weights.shape == (2, 3, 197)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 3))
    torch.testing.assert_close(full.sum(dim=-1), torch.ones(2, 3, 197))
    torch.testing.assert_close(weights, full[:, :, 0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["vit_tiny_patch16_224", "vit_tiny_h6_patch16_224"])
def test_fused_and_unfused_attention_give_the_same_outputs(architecture: str) -> None:
    torch.manual_seed(1)
    model = CXRClassifier(architecture).eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        set_fused_attention(model, True)
        fused = model(images)
        set_fused_attention(model, False)
        unfused = model(images)
    torch.testing.assert_close(fused[0], unfused[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused[1], unfused[1], atol=1e-6, rtol=1e-5)


def test_architectures_have_the_papers_sizes() -> None:
    small = ARCHITECTURES["vit_small_patch16_224"]
    assert (small.embed_dim, small.num_heads) == (384, 6)
    assert ARCHITECTURES["vit_tiny_h6_patch16_224"].num_heads == 6
    assert ARCHITECTURES["vit_tiny_patch16_224"].num_heads == 3
    assert create_encoder("vit_small_patch16_224").embed_dim == 384
    with pytest.raises(ValueError, match="unknown architecture"):
        create_encoder("resnet50")


def test_dynamic_encoder_takes_96_px_focal_views() -> None:
    encoder = create_encoder("vit_nano_patch16_224", dynamic_img_size=True)
    features = encoder.forward_features(torch.randn(2, 3, 96, 96))
    assert features.shape == (2, 1 + 6 * 6, 64)


def test_embed_is_the_pre_logits_cls_embedding(tiny: CXRClassifier) -> None:
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = tiny.forward_features(images)
        torch.testing.assert_close(tiny.embed(images), tiny.forward_head(tokens, pre_logits=True))
        # The attention path's tokens (through forward_intermediates) are forward_features' own.
        assert torch.equal(tiny.features_and_attention(images)[0], tokens)
        torch.testing.assert_close(torch.sigmoid(tiny.forward_head(tokens)), tiny(images)[0])


def test_the_guarded_classifier_adds_the_mahalanobis_score_and_changes_nothing_else() -> None:
    import numpy as np

    from cxrmsn.model import GuardedClassifier
    from cxrmsn.ood import mahalanobis

    torch.manual_seed(0)
    model = CXRClassifier("vit_nano_patch16_224").eval()
    rng = np.random.default_rng(0)
    mean = rng.normal(size=64)
    root = rng.normal(size=(64, 64)) / 8
    precision = root @ root.T + np.eye(64)
    guarded = GuardedClassifier(model, mean, np.linalg.cholesky(precision)).eval()
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        probabilities, attention = model(images)
        guarded_probabilities, guarded_attention, score = guarded(images)
        embeddings = model.embed(images).numpy()
    assert torch.equal(probabilities, guarded_probabilities) and torch.equal(attention, guarded_attention)
    assert score.shape == (3,)
    np.testing.assert_allclose(score.numpy(), mahalanobis(embeddings, mean, precision), rtol=1e-4)
