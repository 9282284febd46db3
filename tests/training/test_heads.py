"""Projection head h and the EHR branch (f_ehr, g)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.msn.ehr_branch import EHRFusion
from training.msn.head import ProjectionHead


def test_head_is_linear_bn_gelu_linear_bn_gelu_linear_with_paper_code_sizes() -> None:
    head = ProjectionHead(192)
    kinds = [type(layer) for layer in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Linear]
    linears = [layer for layer in head.layers if isinstance(layer, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in linears] == [(192, 768), (768, 768), (768, 192)]
    assert head(torch.randn(4, 192)).shape == (4, 192)


def test_head_sizes_are_configurable_as_original_msn() -> None:
    head = ProjectionHead(384, hidden_dim=2048, out_dim=256)
    assert head(torch.randn(3, 384)).shape == (3, 256) and head.out_dim == 256


def test_fusion_shapes_and_layers() -> None:
    fusion = EHRFusion(64, 3)
    assert (fusion.f_ehr.in_features, fusion.f_ehr.out_features) == (3, 128)
    assert (fusion.g.in_features, fusion.g.out_features) == (64 + 128, 64)
    assert fusion(torch.randn(6, 64), torch.randn(2, 3)).shape == (6, 64)


def test_fusion_repeats_each_images_ehr_over_its_views_view_major() -> None:
    fusion = EHRFusion(4, 2, ehr_embed_dim=5)
    ehr = torch.tensor([[0.1, 1.0], [0.9, 0.0]])
    image_features = torch.zeros(6, 4)  # 3 views x 2 images: only the EHR part differs
    fused = fusion(image_features, ehr)
    assert torch.allclose(fused[0], fused[2]) and torch.allclose(fused[2], fused[4])  # image 0
    assert torch.allclose(fused[1], fused[3]) and not torch.allclose(fused[0], fused[1])
    expected = fusion.g(torch.cat([torch.zeros(4), fusion.f_ehr(ehr[1])]))
    assert torch.allclose(fused[5], expected)


def test_fusion_has_no_activation_on_f_ehr() -> None:
    fusion = EHRFusion(2, 1, ehr_embed_dim=1)
    with torch.no_grad():
        fusion.f_ehr.weight.fill_(1.0)
        fusion.f_ehr.bias.fill_(0.0)
    with torch.no_grad():
        assert float(fusion.f_ehr(torch.tensor([[-3.0]]))) == -3.0
    assert not any(isinstance(m, nn.GELU | nn.ReLU) for m in fusion.modules())


def test_fusion_rejects_mismatched_inputs() -> None:
    fusion = EHRFusion(4, 2)
    with pytest.raises(ValueError):
        fusion(torch.zeros(5, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError):
        fusion(torch.zeros(4, 4), torch.zeros(2, 3))
