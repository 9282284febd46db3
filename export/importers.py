"""Foreign ViT weights -> the core checkpoint format, by explicit key mapping.

Each source format has a pure filter, ``filter(checkpoint) -> state_dict``, that maps
every key it keeps to timm's ViT names (those of ``cxrmsn.model.create_encoder``) and
drops only keys it names as not part of the inference encoder; any other key is an
error. The result is then loaded strictly, so a missed key fails loudly.

- ``lightning``: the paper's PyTorch Lightning checkpoint. Its ``state_dict`` holds the
  EMA target encoder under ``backbone.*``: a torchvision VisionTransformer wrapped by
  lightly (``MAEBackbone``, or ``MaskedVisionTransformerTorchvision`` whose ViT sits
  under ``vit.``). Dropped: ``anchor_*`` (the online encoder and head),
  ``projection_head.*``, ``prototypes``, the EHR layers ``f_ehr.*`` and
  ``ehr_cxr_project_g.*``, torchvision's classification ``heads.*`` and lightly's
  ``mask_token``.
- ``msn``: a facebookresearch/msn checkpoint. ``target_encoder`` (DeiT naming, which
  is timm's; a ``module.`` prefix from DistributedDataParallel is removed). Dropped:
  the projection head ``fc.*`` and prediction head ``pred.*``; the other top-level keys
  (``encoder``, ``prototypes``, ``opt`` ...) are not read.
- ``timm``: a plain timm VisionTransformer state dict. Dropped: the ImageNet
  classifier ``head.*``.

The attention head count cannot be read from weights: pass the right architecture
(the paper's ViT-Tiny has 6 heads: ``vit_tiny_h6_patch16_224``).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from cxrmsn.checkpoint import CheckpointMetadata

Filter = Callable[[Mapping[str, Any]], dict[str, torch.Tensor]]

LIGHTNING_ENCODER = "backbone."
LIGHTNING_DROPPED = ("anchor_", "projection_head.", "prototypes", "f_ehr.", "ehr_cxr_project_g.")
TORCHVISION_DROPPED = ("heads.", "mask_token")
MSN_DROPPED = ("fc.", "pred.")
TIMM_DROPPED = ("head.",)

_TORCHVISION_TOP = {
    "class_token": "cls_token",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln.weight": "norm.weight",
    "encoder.ln.bias": "norm.bias",
}
_TORCHVISION_BLOCK = {
    "ln_1.weight": "norm1.weight",
    "ln_1.bias": "norm1.bias",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight",
    "self_attention.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight",
    "ln_2.bias": "norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight",  # torchvision >= 0.13 (MLP as a Sequential)
    "mlp.0.bias": "mlp.fc1.bias",
    "mlp.3.weight": "mlp.fc2.weight",
    "mlp.3.bias": "mlp.fc2.bias",
    "mlp.linear_1.weight": "mlp.fc1.weight",  # torchvision < 0.13
    "mlp.linear_1.bias": "mlp.fc1.bias",
    "mlp.linear_2.weight": "mlp.fc2.weight",
    "mlp.linear_2.bias": "mlp.fc2.bias",
}
_TORCHVISION_LAYER = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")


def torchvision_vit_filter(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """torchvision VisionTransformer keys -> timm ViT keys."""
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(TORCHVISION_DROPPED):
            continue
        layer = _TORCHVISION_LAYER.fullmatch(key)
        if key in _TORCHVISION_TOP:
            mapped[_TORCHVISION_TOP[key]] = value
        elif layer and layer.group(2) in _TORCHVISION_BLOCK:
            mapped[f"blocks.{layer.group(1)}.{_TORCHVISION_BLOCK[layer.group(2)]}"] = value
        else:
            unknown.append(key)
    _refuse_unknown(unknown, "torchvision VisionTransformer")
    return mapped


def lightning_filter(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The paper's Lightning checkpoint -> timm ViT keys of its EMA target encoder."""
    state = _mapping(checkpoint.get("state_dict"), "the Lightning checkpoint's 'state_dict'")
    backbone: dict[str, Any] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith(LIGHTNING_ENCODER):
            inner = key[len(LIGHTNING_ENCODER) :]
            backbone[inner.removeprefix("vit.")] = value
        elif not key.startswith(LIGHTNING_DROPPED):
            unknown.append(key)
    _refuse_unknown(unknown, "the paper's Lightning checkpoint")
    if not backbone:
        raise ValueError(
            f"no '{LIGHTNING_ENCODER}*' keys in the Lightning state_dict: not the paper's MSN model"
        )
    return torchvision_vit_filter(backbone)


def msn_filter(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A facebookresearch/msn checkpoint -> timm ViT keys of its target encoder."""
    state = _mapping(checkpoint.get("target_encoder"), "the msn checkpoint's 'target_encoder'")
    return {
        key.removeprefix("module."): value
        for key, value in state.items()
        if not key.removeprefix("module.").startswith(MSN_DROPPED)
    }


def timm_filter(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A plain timm ViT state dict without its ImageNet classifier."""
    state = _mapping(checkpoint, "a timm state dict")
    return {key: value for key, value in state.items() if not key.startswith(TIMM_DROPPED)}


FILTERS: dict[str, Filter] = {"lightning": lightning_filter, "msn": msn_filter, "timm": timm_filter}


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{what} is missing or empty")
    not_tensors = sorted(str(key) for key, item in value.items() if not isinstance(item, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{what} holds non-tensor entries {not_tensors[:5]}: not a state dict")
    return value


def _refuse_unknown(keys: list[str], source: str) -> None:
    if keys:
        more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
        raise ValueError(f"keys with no mapping from {source}: {sorted(keys)[:5]}{more}")


def load_foreign(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Mapping[str, Any]:
    """A .safetensors file, or a torch pickle loaded with ``weights_only`` unless allowed."""
    source = Path(path)
    if not source.is_file():
        raise ValueError(f"{source} does not exist")
    if source.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(source))
    try:
        loaded = torch.load(str(source), map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{source} holds pickled objects beyond tensors and plain types ({str(exc).splitlines()[0]}); "
            "if you trust the file, pass --allow-pickle (it runs code from the file)"
        ) from None
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{source} holds a {type(loaded).__name__}, not a dict")
    return loaded


def import_weights(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    source_format: str,
    architecture: str,
    kind: str = "encoder",
    allow_pickle: bool = False,
) -> CheckpointMetadata:
    """Write ``out`` in the core format: an encoder, or a classifier with an untrained head.

    The encoder checkpoint's keys are those of ``cxrmsn.model.create_encoder`` (no
    prefix). The classifier's head is all zeros (every probability 0.5) and no label
    is marked as trained, so serving reports no findings from it.
    """
    from cxrmsn.checkpoint import load_state_strictly, save_checkpoint
    from cxrmsn.fileio import sha256_file
    from cxrmsn.model import CXRClassifier, create_encoder

    if source_format not in FILTERS:
        raise ValueError(f"source format must be one of {sorted(FILTERS)}, got {source_format!r}")
    if kind not in ("encoder", "classifier"):
        raise ValueError(f"kind must be 'encoder' or 'classifier', got {kind!r}")
    state = FILTERS[source_format](load_foreign(path, allow_pickle=allow_pickle))
    encoder = create_encoder(architecture)
    load_state_strictly(encoder, state, source=f"{path} ({source_format})")
    origin = {"format": source_format, "file": Path(path).name, "sha256": sha256_file(path)}
    summary = f"ViT encoder imported from a {source_format} checkpoint ({Path(path).name})"
    if kind == "encoder":
        metadata = CheckpointMetadata(
            architecture=architecture,
            kind="encoder",
            training_data={"summary": summary},
            extra={"imported": origin},
        )
        save_checkpoint(out, encoder.state_dict(), metadata)
        return metadata
    model = CXRClassifier(architecture)
    model.encoder.load_state_dict(encoder.state_dict(), strict=True)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    metadata = CheckpointMetadata(
        architecture=architecture,
        kind="classifier",
        training_data={
            "summary": f"{summary}; the linear head is untrained (zeros: every probability is 0.5)"
        },
        extra={"imported": origin, "head": "untrained, zeros"},
    )
    save_checkpoint(out, model.state_dict(), metadata)
    return metadata
