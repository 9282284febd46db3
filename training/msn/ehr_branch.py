"""The EHR branch of the anchor network (the paper's multimodal MSN).

v_ehr = f_ehr(x_ehr), f_ehr a single Linear(n -> 128) with no activation;
v_fused = g(concat(v_cxr, v_ehr)), g a single Linear(D + 128 -> D).
The EHR vector of an image is repeated for each of its M anchor views. The target branch
has no EHR branch; vanilla MSN has none at all.
"""

from __future__ import annotations

import torch
from torch import nn


class EHRFusion(nn.Module):
    def __init__(self, embed_dim: int, ehr_dim: int, *, ehr_embed_dim: int = 128) -> None:
        super().__init__()
        if embed_dim < 1 or ehr_dim < 1 or ehr_embed_dim < 1:
            raise ValueError(f"dimensions must be >= 1, got {embed_dim}, {ehr_dim}, {ehr_embed_dim}")
        self.ehr_dim = ehr_dim
        self.f_ehr = nn.Linear(ehr_dim, ehr_embed_dim)
        self.g = nn.Linear(embed_dim + ehr_embed_dim, embed_dim)

    def forward(self, image_features: torch.Tensor, ehr: torch.Tensor) -> torch.Tensor:
        """[M * B, D] view-major CLS features and [B, n] EHR -> fused [M * B, D]."""
        if ehr.ndim != 2 or ehr.shape[1] != self.ehr_dim or image_features.shape[0] % ehr.shape[0]:
            raise ValueError(
                f"expected EHR [B, {self.ehr_dim}] with M * B image rows, got {tuple(ehr.shape)} "
                f"and {tuple(image_features.shape)}"
            )
        views = image_features.shape[0] // ehr.shape[0]
        ehr_features = self.f_ehr(ehr).repeat(views, 1)
        fused: torch.Tensor = self.g(torch.cat([image_features, ehr_features], dim=1))
        return fused
