"""The paper's Table 3 in one experiment: MSN beside DINO, MAE and the supervised baselines."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
from cxrmsn.model import create_encoder
from cxrmsn.preprocess import PreprocessConfig
from tests.training.downstream.fixtures import TINY_PRETRAIN, small_config
from training.downstream.config import FinetuneConfig
from training.downstream.experiment import Experiment, results_markdown, run_experiment

TINY = (
    *TINY_PRETRAIN,
    "dino.head_hidden=32",
    "dino.bottleneck=8",
    "dino.num_prototypes=16",
    "mae.decoder_dim=32",
    "mae.decoder_depth=1",
    "mae.decoder_heads=2",
    "train.epochs=2",  # after TINY_PRETRAIN's 1: the later override wins
)


def _imported_encoder(path: Path, arch: str) -> Path:
    """Stands in for an ImageNet encoder from `cxr-msn import-weights --format timm`."""
    torch.manual_seed(5)
    size = create_encoder(arch).patch_embed.img_size[0]
    metadata = CheckpointMetadata(
        architecture=arch,
        kind="encoder",
        preprocessing=PreprocessConfig(resize=size, crop=size).to_dict(),
        training_data={"summary": "ViT encoder imported from a timm checkpoint (test stand-in)"},
    )
    save_checkpoint(path, create_encoder(arch).state_dict(), metadata)
    return path


def _experiment(manifest: Path, tmp_path: Path, **changes: object) -> Experiment:
    downstream = small_config(manifest, tmp_path / "cache", max_epochs=3)
    downstream = replace(
        downstream, finetune=FinetuneConfig(max_epochs=1, batch_size=8, max_steps_per_epoch=2)
    )
    experiment = Experiment(
        backbone="small",
        variants=("vanilla",),
        data=("data.source=manifest", f"data.manifest={manifest}", f"data.cache_dir={tmp_path / 'images'}"),
        pretrain_overrides=TINY,
        downstream=downstream,
        baselines=("dino", "mae", "supervised", "supervised-imagenet"),
        pretrain_weights="best_loss",
        finetune_runs="single",
        imagenet_encoder=str(_imported_encoder(tmp_path / "imagenet.safetensors", "vit_nano_patch8_64")),
    )
    return replace(experiment, **changes)  # type: ignore[arg-type]


def test_the_experiment_validates_its_baselines(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="imagenet_encoder"):
        _experiment(manifest, tmp_path, imagenet_encoder="")
    with pytest.raises(ValueError, match="baselines"):
        _experiment(manifest, tmp_path, baselines=("dino", "simclr"))
    with pytest.raises(ValueError, match="pretrain_weights"):
        _experiment(manifest, tmp_path, pretrain_weights="first")


@pytest.mark.slow
def test_msn_beside_dino_mae_and_the_supervised_baselines(manifest: Path, tmp_path: Path) -> None:
    experiment = _experiment(manifest, tmp_path)
    out = tmp_path / "experiment"
    results = run_experiment(experiment, out)
    rows = {row["variant"]: row for row in results["rows"]}
    assert list(rows) == ["vanilla", "dino", "mae", "supervised", "supervised-imagenet"]
    assert [rows[name]["method"] for name in rows] == [
        "msn",
        "dino",
        "mae",
        "supervised",
        "supervised-imagenet",
    ]
    for name in ("dino", "mae"):
        pretrain = json.loads((out / f"small-{name}" / "pretrain" / "config.json").read_text())
        assert pretrain["method"] == name and pretrain["train"]["seed"] == 0
        linear = json.loads((out / f"small-{name}" / "linear" / "metrics.json").read_text())
        assert linear["encoder"]["path"].endswith("encoder_best_loss.safetensors")
        assert rows[name]["protocol"] == "linear" and rows[name]["pretrain_weights"] == "best_loss"
    for name in ("supervised", "supervised-imagenet"):
        row = rows[name]
        assert row["protocol"] == "finetune (100 % labels)" and row["pretrain_epochs"] is None
        assert row["test_images"] == rows["vanilla"]["test_images"]  # the same test split
        assert row["vs_baseline"]["images"] == rows["vanilla"]["test_images"]
        metrics = json.loads((out / f"small-{name}" / "finetune" / "fraction_1" / "metrics.json").read_text())
        assert metrics["finetune_runs"] == "single" and metrics["encoder"]["frozen"] is False
    imagenet = json.loads(
        (out / "small-supervised-imagenet" / "finetune" / "fraction_1" / "metrics.json").read_text()
    )
    assert imagenet["encoder"]["path"] == str((tmp_path / "imagenet.safetensors").resolve())
    assert all(rows[name]["timing_s"] for name in rows)
    table = (out / "results.md").read_text()
    for text in (
        "| small | DINO | 2 |",
        "| small | MAE | 2 |",
        "| small | Supervised, random init (fine-tuned) | - |",
    ):
        assert text in table
    assert "Pretraining (s)" in table and "best_loss epoch" in table
    assert table == results_markdown(json.loads((out / "results.json").read_text()))

    # Finished rows are reused; a wrong-architecture ImageNet encoder is refused.
    mtime = (out / "small-mae" / "linear" / "metrics.json").stat().st_mtime_ns
    assert run_experiment(experiment, out)["rows"] == results["rows"]
    assert (out / "small-mae" / "linear" / "metrics.json").stat().st_mtime_ns == mtime
    wrong = _imported_encoder(tmp_path / "wrong.safetensors", "vit_nano_patch16_224")
    with pytest.raises(ValueError, match="import-weights"):
        run_experiment(replace(experiment, imagenet_encoder=str(wrong)), tmp_path / "other")


def test_the_command_line_builds_the_baselines(tmp_path: Path) -> None:
    import argparse

    from training import experiment_command

    parser = argparse.ArgumentParser()
    experiment_command.add_arguments(parser)
    args = parser.parse_args(
        [
            "--out", str(tmp_path / "e"), "--preset", "smoke", "--baselines", "dino,mae,supervised",
            "--encoder-weights", "best_loss", "--finetune-set", "max_epochs=3",
        ]
    )  # fmt: skip
    experiment = experiment_command.build_experiment(args)
    assert experiment.baselines == ("dino", "mae", "supervised") and experiment.finetune_runs == "grid"
    assert (
        experiment.pretrain_weights == "best_loss" and experiment.finetune_config().finetune.max_epochs == 3
    )
    assert experiment.finetune_config().finetune.fractions == (1.0,)
    assert experiment.pretrain_config("dino").method == "dino"
    assert experiment.pretrain_config("mae").monitor.max_images == 64  # the smoke preset's probe
    assert experiment.to_dict()["baselines"] == ["dino", "mae", "supervised"]
    args.controls, args.seeds, args.finetune_runs = "supervised", "", None
    assert experiment_command.build_controls(args, experiment).finetune_runs == "single"
