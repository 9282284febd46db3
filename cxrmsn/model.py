"""The model: a timm ViT encoder and a linear 14-label head (needs the ``train`` extra).

``CXRClassifier.forward`` returns ``(probabilities [B, 14], attention [B, gh, gw])``:
sigmoid probabilities and the last block's CLS-to-patch attention averaged over heads.
The attention is computed from the block's own q/k weights on a side path, so it is the
same whether timm's fused attention kernel runs the block or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

try:
    import torch
    import torch.nn.functional as F
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("cxrmsn.model needs torch and timm: pip install 'cxr-msn[train]'") from exc

from cxrmsn.labels import NUM_LABELS


@dataclass(frozen=True)
class VitSpec:
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    img_size: int = 224


#: Named encoders; hyperparameters in the name, as timm does.
ARCHITECTURES: dict[str, VitSpec] = {
    # timm's ViT-Tiny/16 (3 heads).
    "vit_tiny_patch16_224": VitSpec(embed_dim=192, depth=12, num_heads=3),
    # The paper's ViT-Tiny/16 used 6 heads of 32 dimensions.
    "vit_tiny_h6_patch16_224": VitSpec(embed_dim=192, depth=12, num_heads=6),
    "vit_small_patch16_224": VitSpec(embed_dim=384, depth=12, num_heads=6),
    # The paper's ViT-Tiny (6 heads) at native resolution for small images (64 px, 8 x 8 grid of
    # 8 px patches): what the ``small-*`` recipes pretrain on ../shared/data's 64 px NIH films.
    "vit_tiny_h6_patch8_64": VitSpec(embed_dim=192, depth=12, num_heads=6, patch_size=8, img_size=64),
    # Two blocks, for fast tests and smoke runs only; not a model to train for use.
    "vit_nano_patch16_224": VitSpec(embed_dim=64, depth=2, num_heads=2),
    "vit_nano_patch8_64": VitSpec(embed_dim=64, depth=2, num_heads=2, patch_size=8, img_size=64),
}


def architecture_spec(name: str) -> VitSpec:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def create_encoder(name: str, *, dynamic_img_size: bool = False) -> VisionTransformer:
    """A randomly initialised ViT with a CLS token and no classification head.

    ``dynamic_img_size=True`` resamples position embeddings for other input sizes
    (the 96 px focal views of MSN pretraining); the weights are the same either way.
    """
    spec = architecture_spec(name)
    return VisionTransformer(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        num_classes=0,
        global_pool="token",
        class_token=True,
        qkv_bias=True,
        dynamic_img_size=dynamic_img_size,
    )


def cls_attention_weights(block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Softmax attention of the CLS query over all tokens in ``block``: [B, heads, N].

    ``tokens`` is the block's input [B, N, D]. Only the keys and the CLS query are
    projected, so the side path costs about a twelfth of one block.
    """
    attn: Any = block.attn  # timm's Attention: qkv, num_heads, head_dim, scale, q_norm, k_norm
    dim = tokens.shape[-1]
    normed = block.get_submodule("norm1")(tokens)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q_bias = bias[:dim] if bias is not None else None
    k_bias = bias[dim : 2 * dim] if bias is not None else None
    query = F.linear(normed[:, :1], weight[:dim], q_bias)
    keys = F.linear(normed, weight[dim : 2 * dim], k_bias)
    batch, count, _ = keys.shape
    query = attn.q_norm(query.reshape(batch, 1, attn.num_heads, attn.head_dim).transpose(1, 2))
    keys = attn.k_norm(keys.reshape(batch, count, attn.num_heads, attn.head_dim).transpose(1, 2))
    scores = (query * attn.scale) @ keys.transpose(-2, -1)  # [B, heads, 1, N]
    return scores.softmax(dim=-1).squeeze(2)


class CXRClassifier(nn.Module):
    """ViT encoder + linear head for the 14 CheXpert labels."""

    def __init__(self, architecture: str, *, num_labels: int = NUM_LABELS) -> None:
        super().__init__()
        self.architecture = architecture
        self.encoder = create_encoder(architecture)
        self.head = nn.Linear(self.encoder.embed_dim, num_labels)

    @property
    def grid_size(self) -> tuple[int, int]:
        grid = self.encoder.patch_embed.grid_size
        return int(grid[0]), int(grid[1])

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the final norm [B, N, D], as timm's ``forward_features``."""
        return self.encoder.forward_features(images)

    def features_and_attention(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward_features``' tokens and the last block's CLS attention [B, heads, N].

        Through timm's public ``forward_intermediates``: the embedding and every block but
        the last, whose input the attention side path reads; then the last block and norm.
        """
        encoder = self.encoder
        *_, last_block = encoder.blocks
        tokens = self._last_block_input(images)
        attention = cls_attention_weights(last_block, tokens)
        return encoder.norm(last_block(tokens)), attention

    def _last_block_input(self, images: torch.Tensor) -> torch.Tensor:
        """The tokens [B, N, D] (prefix tokens first) the last block takes: the output of the
        block before it (every architecture has two blocks or more)."""
        encoder = self.encoder
        depth = len(encoder.blocks)
        intermediates: Any = encoder.forward_intermediates(  # [(spatial tokens, prefix tokens)]
            images,
            indices=[depth - 2],
            return_prefix_tokens=True,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        [(spatial, prefix)] = intermediates
        return torch.cat([prefix, spatial], dim=1)

    def forward_head(self, tokens: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        embedding = self.encoder.forward_head(tokens, pre_logits=True)
        return embedding if pre_logits else self.head(embedding)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """CLS embeddings [B, D] (what linear evaluation trains on)."""
        return self.forward_head(self.forward_features(images), pre_logits=True)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, attention = self.features_and_attention(images)
        probabilities = torch.sigmoid(self.forward_head(tokens))
        prefix = self.encoder.num_prefix_tokens
        grid_h, grid_w = self.grid_size
        patch_attention = attention[:, :, prefix:].mean(dim=1)
        return probabilities, patch_attention.reshape(-1, grid_h, grid_w)


def set_fused_attention(model: nn.Module, enabled: bool) -> None:
    """Switch timm's fused attention kernel on or off in every block of ``model``."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            attention: Any = module
            attention.fused_attn = enabled


class GuardedClassifier(nn.Module):
    """A CXRClassifier with the out-of-distribution score as a third output (``cxrmsn.ood``).

    ``forward`` returns ``(probabilities, attention, ood_score [B])``: the Mahalanobis distance
    ``|| (e - mean) @ whitening ||`` of the CLS embedding ``e`` the head reads, from the same
    forward pass. ``mean`` [D] and ``whitening`` [D, D] (the Cholesky factor of the precision)
    are buffers, so they become constants of the exported graph.
    """

    mean: torch.Tensor
    whitening: torch.Tensor

    def __init__(self, classifier: CXRClassifier, mean: Any, whitening: Any) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("whitening", torch.as_tensor(whitening, dtype=torch.float32))

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.classifier.grid_size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        classifier = self.classifier
        tokens, attention = classifier.features_and_attention(images)
        embedding = classifier.forward_head(tokens, pre_logits=True)
        probabilities = torch.sigmoid(classifier.head(embedding))
        prefix = classifier.encoder.num_prefix_tokens
        grid_h, grid_w = classifier.grid_size
        patch_attention = attention[:, :, prefix:].mean(dim=1).reshape(-1, grid_h, grid_w)
        whitened = (embedding - self.mean) @ self.whitening
        score = torch.sqrt((whitened * whitened).sum(dim=-1))
        return probabilities, patch_attention, score
