"""Importers: generated checkpoints with each source's real key layout and shapes.

The torchvision and timm sources are built from the real classes, so the tests check
that the imported encoder computes what the source model computes, not only that the
keys line up.
"""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from cxrmsn.checkpoint import CheckpointError, load_checkpoint, load_classifier
from cxrmsn.model import CXRClassifier, create_encoder
from export.importers import import_weights, lightning_filter, msn_filter, timm_filter, torchvision_vit_filter

NANO = "vit_nano_patch16_224"  # 64 wide, 2 blocks, 2 heads
REPO_ROOT = Path(__file__).resolve().parents[2]


def perturbed(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter moved off its initial value, so a mis-mapped tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def torchvision_vit(seed: int = 0) -> nn.Module:
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(
        image_size=224, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=256
    )
    return perturbed(vit, seed)


def cls_embedding_torchvision(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    heads, vit.heads = vit.heads, nn.Identity()
    try:
        with torch.no_grad():
            return vit(images)
    finally:
        vit.heads = heads


def cls_embedding(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.forward_head(encoder.forward_features(images), pre_logits=True)  # type: ignore[operator]


def lightning_checkpoint(target: nn.Module, online: nn.Module) -> dict[str, object]:
    """The layout of the paper's CxrEhrMSN Lightning checkpoint (lightly MAEBackbone)."""
    state: dict[str, torch.Tensor] = OrderedDict()
    for key, value in target.state_dict().items():
        state[f"backbone.{key}"] = value
    for key, value in online.state_dict().items():
        state[f"anchor_backbone.{key}"] = value
    for prefix in ("projection_head", "anchor_projection_head"):
        state[f"{prefix}.layers.0.weight"] = torch.randn(256, 64)
        state[f"{prefix}.layers.1.running_mean"] = torch.zeros(256)
    state["prototypes"] = torch.randn(1024, 64)
    state["f_ehr.weight"], state["f_ehr.bias"] = torch.randn(128, 2), torch.randn(128)
    state["ehr_cxr_project_g.weight"], state["ehr_cxr_project_g.bias"] = torch.randn(64, 192), torch.randn(64)
    return {
        "epoch": 99,
        "global_step": 5000,
        "pytorch-lightning_version": "2.0.9",
        "state_dict": state,
        "hyper_parameters": {"lr": 1e-4, "mask_ratio": 0.15},
        "optimizer_states": [{"state": {}}],
    }


def test_lightning_target_encoder_computes_what_torchvision_computes() -> None:
    target, online = torchvision_vit(seed=0), torchvision_vit(seed=1)
    state = lightning_filter(lightning_checkpoint(target, online))
    encoder = create_encoder(NANO)
    encoder.load_state_dict(state, strict=True)
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = cls_embedding_torchvision(target, images)
    torch.testing.assert_close(cls_embedding(encoder.eval(), images), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(
        cls_embedding(encoder, images), cls_embedding_torchvision(online, images), atol=1e-3
    )


def test_lightly_masked_vit_wrapper_and_old_mlp_names_are_understood() -> None:
    target = torchvision_vit()
    state = {f"backbone.vit.{k}": v for k, v in target.state_dict().items()}
    state["backbone.mask_token"] = torch.zeros(1, 1, 64)
    mapped = lightning_filter({"state_dict": state})
    old_names = {
        k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
        for k, v in target.state_dict().items()
    }
    assert (
        mapped.keys() == torchvision_vit_filter(old_names).keys() == create_encoder(NANO).state_dict().keys()
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda s: s.update({"ehr_encoder.weight": torch.zeros(1)}),
            r"no mapping .*\['ehr_encoder.weight'\]",
        ),
        (lambda s: s.update({"backbone.encoder.layers.encoder_layer_0.extra": torch.zeros(1)}), "no mapping"),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("backbone.")], r"no 'backbone\.\*' keys"),
    ],
)
def test_lightning_keys_without_a_rule_fail_loudly(mutate: object, message: str) -> None:
    checkpoint = lightning_checkpoint(torchvision_vit(), torchvision_vit(1))
    mutate(checkpoint["state_dict"])  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        lightning_filter(checkpoint)


def msn_checkpoint(target: dict[str, torch.Tensor], online: dict[str, torch.Tensor]) -> dict[str, object]:
    """facebookresearch/msn's save_dict: DDP-wrapped encoders with the projection head as ``fc``."""

    def wrapped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        head = {
            "fc.fc1.weight": torch.randn(128, 64),
            "fc.bn1.running_var": torch.ones(128),
            "fc.bn1.num_batches_tracked": torch.tensor(7),
            "fc.fc3.weight": torch.randn(32, 128),
        }
        return {f"module.{k}": v for k, v in {**state, **head}.items()}

    return {
        "encoder": wrapped(online),
        "target_encoder": wrapped(target),
        "prototypes": torch.randn(1024, 32),
        "opt": {"state": {}, "param_groups": []},
        "epoch": 300,
        "loss": 2.1,
        "batch_size": 64,
        "world_size": 8,
        "lr": 1e-3,
        "temperature": 0.1,
    }


def test_msn_target_encoder_is_taken_and_heads_dropped() -> None:
    target = perturbed(create_encoder(NANO), 2).state_dict()
    online = perturbed(create_encoder(NANO), 3).state_dict()
    mapped = msn_filter(msn_checkpoint(target, online))
    assert mapped.keys() == target.keys()
    for key, value in target.items():
        assert torch.equal(mapped[key], value), key
    encoder = create_encoder(NANO)
    encoder.load_state_dict(mapped, strict=True)


def test_timm_state_dict_computes_what_timm_computes() -> None:
    from timm.models.vision_transformer import VisionTransformer

    source = perturbed(VisionTransformer(embed_dim=64, depth=2, num_heads=2, num_classes=1000), 4)
    mapped = timm_filter(source.state_dict())
    assert "head.weight" in source.state_dict() and "head.weight" not in mapped
    encoder = create_encoder(NANO)
    encoder.load_state_dict(mapped, strict=True)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(images), pre_logits=True)  # type: ignore[operator]
    torch.testing.assert_close(cls_embedding(encoder.eval(), images), expected)


def test_import_writes_encoder_and_untrained_classifier_checkpoints(tmp_path: Path) -> None:
    target = torchvision_vit()
    source = tmp_path / "msn-ehr.ckpt"
    torch.save(lightning_checkpoint(target, torchvision_vit(1)), source)

    import_weights(source, tmp_path / "encoder.safetensors", source_format="lightning", architecture=NANO)
    state, metadata = load_checkpoint(tmp_path / "encoder.safetensors", kind="encoder")
    assert metadata.architecture == NANO and metadata.extra["imported"]["format"] == "lightning"
    assert state.keys() == create_encoder(NANO).state_dict().keys()

    import_weights(source, tmp_path / "cls.safetensors", source_format="lightning", architecture=NANO,
                   kind="classifier")  # fmt: skip
    model, metadata = load_classifier(tmp_path / "cls.safetensors")
    assert metadata.trained_labels == [] and "untrained" in metadata.training_data["summary"]
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        probabilities, _ = model(images)
    torch.testing.assert_close(probabilities, torch.full((2, 14), 0.5))
    assert isinstance(model, CXRClassifier)
    torch.testing.assert_close(
        model.embed(images), cls_embedding_torchvision(target, images), atol=1e-5, rtol=1e-5
    )


def test_import_refuses_a_wrong_architecture_and_untrusted_pickles(tmp_path: Path) -> None:
    source = tmp_path / "timm.safetensors"
    from safetensors.torch import save_file

    save_file(create_encoder(NANO).state_dict(), str(source))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        import_weights(
            source, tmp_path / "x.safetensors", source_format="timm", architecture="vit_tiny_patch16_224"
        )
    assert not (tmp_path / "x.safetensors").exists()

    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Path("/opaque")}, pickled)
    with pytest.raises(ValueError, match="--allow-pickle"):
        import_weights(pickled, tmp_path / "y.safetensors", source_format="lightning", architecture=NANO)
    with pytest.raises(ValueError, match="'state_dict' is missing or empty"):
        import_weights(pickled, tmp_path / "y.safetensors", source_format="lightning", architecture=NANO,
                       allow_pickle=True)  # fmt: skip


def test_import_command_runs_as_a_program(tmp_path: Path) -> None:
    source = tmp_path / "msn.pth.tar"
    torch.save(msn_checkpoint(create_encoder(NANO).state_dict(), create_encoder(NANO).state_dict()), source)
    command = [sys.executable, "-m", "export.import_command", str(source), str(tmp_path / "out.safetensors"),
               "--format", "msn", "--arch", NANO, "--kind", "classifier"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "untrained" in result.stdout
    load_classifier(tmp_path / "out.safetensors")
    as_timm = [*command[:-4], "--format", "timm", "--arch", NANO]
    wrong = subprocess.run(as_timm, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert wrong.returncode == 2 and "non-tensor entries" in wrong.stderr
