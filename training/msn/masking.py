"""Patch dropping for anchor views: keep a random subset of patch tokens, always the CLS.

MSN masks anchor views by dropping a fraction ``ratio`` of the patch tokens after the
position embeddings were added (so the kept tokens keep their positions); the target
view is never masked. Two variants (REFERENCE section 1):

- per sample (the paper's code): every anchor image gets its own random mask;
- per batch (original MSN): one random mask shared by the whole batch of a view group.

The number kept is ``floor(num_patches * (1 - ratio))`` (original MSN), at least 1:
196 patches at ratio 0.15 keep 166; 36 patches (96 px) keep 30.
"""

from __future__ import annotations

import math

import torch


def num_kept(num_patches: int, ratio: float) -> int:
    if num_patches < 1 or not 0 <= ratio < 1:
        raise ValueError(f"need num_patches >= 1 and ratio in [0, 1), got {num_patches}, {ratio}")
    return max(1, math.floor(num_patches * (1 - ratio) + 1e-9))


def sample_keep_indices(
    batch: int,
    num_patches: int,
    ratio: float,
    *,
    per_sample: bool,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices of the kept patches (0-based, CLS excluded): long [batch, num_kept]."""
    keep = num_kept(num_patches, ratio)
    if per_sample:
        scores = torch.rand(batch, num_patches, generator=generator)
        indices = scores.argsort(dim=1)[:, :keep]
    else:
        indices = torch.randperm(num_patches, generator=generator)[:keep].expand(batch, keep)
    return indices.to(device)


def drop_patches(tokens: torch.Tensor, keep: torch.Tensor, *, num_prefix_tokens: int = 1) -> torch.Tensor:
    """[B, prefix + L, D] tokens -> [B, prefix + num_kept, D]: prefix tokens + kept patches."""
    if keep.ndim != 2 or keep.shape[0] != tokens.shape[0]:
        raise ValueError(f"keep must be [batch, kept] with batch {tokens.shape[0]}, got {tuple(keep.shape)}")
    prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
    index = keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    return torch.cat([prefix, patches.gather(1, index)], dim=1)
