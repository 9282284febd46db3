"""The encoders a pretraining run keeps: the EMA target's tensors, the last and the best-loss epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import training.pretrain as pretrain_module
from cxrmsn.checkpoint import load_checkpoint, load_state_strictly
from cxrmsn.model import create_encoder
from tests.training.pretrain_fixtures import NANO_RUN, write_pretrain_manifest
from training.config import PretrainConfig, apply_overrides
from training.pretrain import pretrain
from training.train_step import StepStats

pytestmark = pytest.mark.slow


def _config(manifest: Path, cache: Path, *overrides: str) -> PretrainConfig:
    return apply_overrides(
        PretrainConfig(),
        [*NANO_RUN, f"data.manifest={manifest}", f"data.cache_dir={cache}", *overrides],
    )


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name.removeprefix(prefix): t for name, t in state.items() if name.startswith(prefix)}


def test_the_last_and_the_best_loss_encoders_hold_the_ema_targets_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real steps, but the epoch losses the loop sees are 3, 1, 2: the best epoch is the second.
    real_step = pretrain_module.run_step
    epoch_losses = [3.0, 1.0, 2.0]

    def step(parts: Any, batch: dict[str, torch.Tensor], index: int) -> StepStats:
        stats = real_step(parts, batch, index)
        stats.values["loss"] = torch.tensor(epoch_losses[index // parts.steps_per_epoch])
        return stats

    monkeypatch.setattr(pretrain_module, "run_step", step)
    manifest = write_pretrain_manifest(tmp_path / "data")
    out = tmp_path / "run"
    config = _config(manifest, tmp_path / "cache", "train.epochs=3", "train.keep_epoch_encoders=true")
    summary = pretrain(config, out)
    assert summary["best_epoch"] == 2 and summary["encoder_best_loss_epoch"] == 2
    assert summary["encoder_epoch"] == 3 and summary["method"] == "msn"
    checkpoints = out / "checkpoints"
    assert summary["encoder_best_loss"] == str(checkpoints / "encoder_best_loss.safetensors")

    last, last_meta = load_checkpoint(checkpoints / "encoder.safetensors", kind="encoder")
    best, best_meta = load_checkpoint(checkpoints / "encoder_best_loss.safetensors", kind="encoder")
    assert (last_meta.metrics["epoch"], last_meta.extra["selection"]) == (3, "last")
    assert (best_meta.metrics["epoch"], best_meta.extra["selection"]) == (2, "best_loss")
    assert best_meta.metrics["best_loss"] == 1.0 and best_meta.metrics["best_loss_epoch"] == 2
    assert last_meta.extra["weights"] == "EMA target encoder" and last_meta.extra["method"] == "msn"

    # The last encoder is the EMA target's encoder after the run, tensor for tensor, not the anchor's.
    state = torch.load(checkpoints / "state.pt", weights_only=True)
    target = _prefixed(state["target"], "encoder.")
    anchor = _prefixed(state["anchor"], "encoder.")
    assert last.keys() == target.keys()
    assert all(torch.equal(last[name], target[name]) for name in last)
    assert not all(torch.equal(last[name], anchor[name]) for name in last)
    load_state_strictly(create_encoder("vit_nano_patch8_64"), last, source="test")

    # The best-loss encoder is the one of epoch 2, not 3.
    epoch2, _ = load_checkpoint(checkpoints / "encoder_epoch002.safetensors")
    epoch3, _ = load_checkpoint(checkpoints / "encoder_epoch003.safetensors")
    assert all(torch.equal(best[name], epoch2[name]) for name in best)
    assert all(torch.equal(last[name], epoch3[name]) for name in last)
    assert not all(torch.equal(best[name], last[name]) for name in best)
    written = json.loads((out / "summary.json").read_text())
    assert written["encoder_best_loss_epoch"] == 2


def test_an_improving_run_keeps_its_last_epoch_as_the_best(tmp_path: Path) -> None:
    manifest = write_pretrain_manifest(tmp_path / "data")
    out = tmp_path / "run"
    summary = pretrain(_config(manifest, tmp_path / "cache", "train.epochs=1"), out)
    assert summary["encoder_best_loss_epoch"] == summary["encoder_epoch"] == 1
    last, _ = load_checkpoint(out / "checkpoints" / "encoder.safetensors")
    best, meta = load_checkpoint(out / "checkpoints" / "encoder_best_loss.safetensors")
    assert (
        all(torch.equal(best[name], last[name]) for name in best) and meta.extra["selection"] == "best_loss"
    )
