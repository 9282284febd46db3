"""The two MSN networks around the core's timm ViT encoder.

- ``MSNAnchor`` (trained): encoder f_anchor, optional EHR branch (f_ehr, g), projection
  head h, and the K prototypes. ``forward`` returns the anchor projections z and the
  prototypes (so that DDP sees the prototypes used in the step it synchronises).
- ``MSNTarget`` (EMA, no gradients): encoder f_target and head h+, no EHR branch.

``MSNTarget.encoder`` is a ``cxrmsn.model.create_encoder`` ViT: its state dict is what
the encoder checkpoint holds for linear evaluation.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cxrmsn.model import create_encoder
from training.msn.ehr_branch import EHRFusion
from training.msn.head import ProjectionHead
from training.msn.masking import drop_patches


def encode_tokens(
    encoder: VisionTransformer, images: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Tokens after the final norm [B, prefix + n, D]; ``keep`` [B, n] drops the other patches
    after the position embeddings were added (so the kept ones keep their positions)."""
    tokens = encoder.patch_embed(images)
    tokens = encoder._pos_embed(tokens)
    if keep is not None:
        tokens = drop_patches(tokens, keep, num_prefix_tokens=encoder.num_prefix_tokens)
    tokens = encoder.norm_pre(tokens)
    result: torch.Tensor = encoder.norm(encoder.blocks(tokens))
    return result


def encode_cls(
    encoder: VisionTransformer, images: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """CLS embedding [B, D] of ``images`` [B, 3, H, W]; ``keep`` [B, n] drops the other patches."""
    cls: torch.Tensor = encoder.forward_head(encode_tokens(encoder, images, keep), pre_logits=True)
    return cls


def num_patches(encoder: VisionTransformer, size: int) -> int:
    patch = encoder.patch_embed.patch_size[0]
    if size % patch:
        raise ValueError(f"view size {size} is not a multiple of the patch size {patch}")
    return (size // patch) ** 2


class MSNTarget(nn.Module):
    def __init__(self, encoder: VisionTransformer, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] unmasked target views -> [B, d]."""
        result: torch.Tensor = self.head(encode_cls(self.encoder, images))
        return result


class MSNAnchor(nn.Module):
    def __init__(
        self,
        arch: str,
        *,
        head_hidden: int = 0,
        head_out: int = 0,
        num_prototypes: int = 1024,
        ehr_dim: int = 0,
        ehr_embed_dim: int = 128,
    ) -> None:
        super().__init__()
        self.encoder = create_encoder(arch, dynamic_img_size=True)
        width = self.encoder.embed_dim
        self.fusion = EHRFusion(width, ehr_dim, ehr_embed_dim=ehr_embed_dim) if ehr_dim > 0 else None
        self.head = ProjectionHead(width, hidden_dim=head_hidden, out_dim=head_out)
        bound = 1 / math.sqrt(self.head.out_dim)  # original MSN's initialisation
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, self.head.out_dim).uniform_(-bound, bound))

    def make_target(self) -> MSNTarget:
        """A frozen copy of the encoder and head (no EHR branch, no prototypes)."""
        import copy

        target = MSNTarget(copy.deepcopy(self.encoder), copy.deepcopy(self.head))
        target.requires_grad_(False)
        return target

    def forward(
        self,
        groups: list[torch.Tensor],
        keeps: list[torch.Tensor | None],
        ehr: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor view groups (each [V * B, 3, S, S], view-major) -> (z [M * B, d], prototypes [K, d])."""
        if len(groups) != len(keeps):
            raise ValueError(f"one keep (or None) per view group, got {len(groups)} groups and {len(keeps)}")
        features = torch.cat([encode_cls(self.encoder, g, k) for g, k in zip(groups, keeps, strict=True)])
        if self.fusion is not None:
            if ehr is None:
                raise ValueError("this model has an EHR branch: pass the EHR features")
            features = self.fusion(features, ehr)
        elif ehr is not None and ehr.numel():
            raise ValueError("EHR features given to a model without an EHR branch (vanilla MSN)")
        return self.head(features), self.prototypes
