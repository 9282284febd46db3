"""The MAE baseline's network and forward pass (method=mae).

``MAEModel``: the project's ViT encoder on the kept patches of the target view (random
masking per sample, ``mae.mask_ratio``, the CLS token always kept: ``training.msn.masking``),
then a light transformer decoder: a linear embedding to ``decoder_dim``, a learned mask token
in every hidden position, fixed 2-D sine-cosine position embeddings (MAE's), ``decoder_depth``
timm blocks, a LayerNorm and a linear prediction of each patch's p * p * 3 pixels. There is
no EMA network: the encoder itself is what the checkpoint keeps. The encoder keeps the
project's learned position embeddings (MAE fixes its encoder's to sine-cosine), so every
method pretrains the same ViT.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from cxrmsn.model import create_encoder
from training.baselines.mae_loss import mae_loss, masked_from_keep
from training.msn.masking import sample_keep_indices
from training.msn.model import encode_tokens, num_patches


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim]: sin then cos of position x 10000^(-2i/dim) (MAE's)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's ``get_2d_sincos_pos_embed`` without the CLS row: [grid * grid, dim], float32.

    Patch ``r * grid + c``: the first half of the dimensions encodes its column c, the second
    its row r (MAE builds its grid with numpy's xy meshgrid).
    """
    if dim % 4:
        raise ValueError(f"the embedding width must be a multiple of 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    embedding = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    return embedding.float()


class MAEModel(nn.Module):
    def __init__(
        self, arch: str, *, decoder_dim: int, decoder_depth: int, decoder_heads: int, mask_ratio: float
    ) -> None:
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = create_encoder(arch, dynamic_img_size=True)
        self.mask_ratio = mask_ratio
        self.patch = int(self.encoder.patch_embed.patch_size[0])
        self.decoder_embed = nn.Linear(self.encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * 3)
        self.fusion = None  # no EHR branch: an image-only baseline
        nn.init.normal_(self.mask_token, std=0.02)
        for name, module in self.named_modules():
            if name.startswith("decoder") and isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def sample_keep(self, images: torch.Tensor) -> torch.Tensor:
        """A random mask per sample: [B, kept] indices of the patches the encoder sees."""
        patches = num_patches(self.encoder, images.shape[-1])
        return sample_keep_indices(
            images.shape[0], patches, self.mask_ratio, per_sample=True, device=images.device
        )

    def forward(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] images and [B, kept] kept patches -> pixel predictions [B, L, p * p * 3]."""
        grid = images.shape[-1] // self.patch
        tokens = self.decoder_embed(encode_tokens(self.encoder, images, keep))
        prefix = self.encoder.num_prefix_tokens
        batch, width = tokens.shape[0], tokens.shape[-1]
        hidden = self.mask_token.to(tokens.dtype).expand(batch, grid * grid, width)  # autocast: one dtype
        index = keep.unsqueeze(-1).expand(-1, -1, width)
        patches = torch.scatter(hidden, 1, index, tokens[:, prefix:])  # kept tokens back in place
        position = sincos_2d(width, grid).to(tokens.device, tokens.dtype)
        x = torch.cat([tokens[:, :prefix], patches + position], dim=1)  # the CLS position is zero
        for block in self.decoder_blocks:
            x = block(x)
        result: torch.Tensor = self.decoder_pred(self.decoder_norm(x))[:, prefix:]
        return result


def mae_forward(
    model: nn.Module,
    mae: MAEModel,
    batch: dict[str, torch.Tensor],
    *,
    norm_pix_loss: bool,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one step on the target views (call inside autocast). ``model`` is ``mae`` or
    its DDP wrapper."""
    images = batch["target"].to(device, non_blocking=True)
    keep = mae.sample_keep(images)
    predictions = model(images, keep)
    masked = masked_from_keep(keep, predictions.shape[1])
    loss = mae_loss(predictions.float(), images.float(), masked, patch=mae.patch, norm_pix_loss=norm_pix_loss)
    return loss, {}
