"""The MAE reconstruction loss: mean squared error on the pixels of the masked patches.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022
(facebookresearch/mae ``MaskedAutoencoderViT.forward_loss``), the baseline the MSN paper
compares with (Table 3).

Shapes (B images, L = (H / p) * (W / p) patches of p x p pixels, C channels):

- ``images``: [B, C, H, W], the (normalised) input the encoder saw a part of
- ``predictions``: [B, L, p * p * C], the decoder's output for every patch
- ``masked``: [B, L], 1 where the patch was hidden from the encoder, 0 where it was kept

Steps:

1. Patchify the images: [B, L, p * p * C], each patch flattened row by row, channels last
   (MAE's ``patchify``: ``nchpwq -> nhwpqc``).
2. With ``norm_pix_loss``, normalise each target patch by its own mean and (unbiased)
   variance: (x - mean) / sqrt(var + 1e-6).
3. Per-patch mean squared error over its p * p * C values.
4. The mean over the masked patches only: the kept ones carry no loss.
"""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H / p) * (W / p), p * p * C] (step 1)."""
    batch, channels, height, width = images.shape
    if patch < 1 or height % patch or width % patch:
        raise ValueError(f"image {height} x {width} is not a whole number of {patch} px patches")
    rows, cols = height // patch, width // patch
    x = images.reshape(batch, channels, rows, patch, cols, patch)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(batch, rows * cols, patch * patch * channels)


def masked_from_keep(keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """[B, kept] indices of the kept patches -> float [B, L]: 1 hidden, 0 kept."""
    masked = torch.ones(keep.shape[0], num_patches, device=keep.device)
    return masked.scatter(1, keep, 0.0)


def mae_loss(
    predictions: torch.Tensor, images: torch.Tensor, masked: torch.Tensor, *, patch: int, norm_pix_loss: bool
) -> torch.Tensor:
    """The MAE loss of the module docstring; see there for shapes."""
    target = patchify(images, patch)
    if predictions.shape != target.shape or masked.shape != target.shape[:2]:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and masked {tuple(masked.shape)} do not fit "
            f"the patchified images {tuple(target.shape)}"
        )
    if float(masked.sum()) == 0:
        raise ValueError("no patch is masked: the MAE loss is undefined")
    if norm_pix_loss:  # step 2
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((predictions - target) ** 2).mean(dim=-1)  # step 3
    return (per_patch * masked).sum() / masked.sum()  # step 4
