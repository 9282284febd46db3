"""The projection head h (and its EMA copy h+): Linear-BN-GELU-Linear-BN-GELU-Linear.

Original MSN: hidden 2048, output 256. The paper's code: hidden 4 D, output D, for an
encoder of width D (``hidden_dim=0``/``out_dim=0`` here mean exactly that).
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    def __init__(self, in_dim: int, *, hidden_dim: int = 0, out_dim: int = 0) -> None:
        super().__init__()
        if in_dim < 1 or hidden_dim < 0 or out_dim < 0:
            raise ValueError(
                f"need in_dim >= 1, hidden_dim >= 0, out_dim >= 0; got {in_dim}, {hidden_dim}, {out_dim}"
            )
        hidden = hidden_dim or 4 * in_dim
        self.out_dim = out_dim or in_dim
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
            nn.Linear(hidden, self.out_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[N, in_dim] -> [N, out_dim]."""
        result: torch.Tensor = self.layers(features)
        return result
