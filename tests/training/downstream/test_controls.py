"""MSN against its controls end to end: one tiny pretraining, random-init, supervised and pixel arms."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cxrmsn.checkpoint import load_checkpoint
from tests.training.downstream.fixtures import TINY_PRETRAIN, small_config
from training.config import from_dict
from training.distributed import DistInfo
from training.downstream.config import FinetuneConfig
from training.downstream.controls import ControlExperiment, results_markdown, run_controls
from training.downstream.experiment import Experiment
from training.train_step import build_parts

pytestmark = pytest.mark.slow


def test_msn_and_the_three_controls_share_splits_and_are_compared_with_random_init(
    manifest: Path, tmp_path: Path
) -> None:
    downstream = small_config(manifest, tmp_path / "cache", max_epochs=3)
    experiment = Experiment(
        backbone="small",
        variants=("vanilla",),
        data=("data.source=manifest", f"data.manifest={manifest}", f"data.cache_dir={tmp_path / 'images'}"),
        pretrain_overrides=TINY_PRETRAIN,
        downstream=downstream,
    )
    setup = ControlExperiment(
        experiment=experiment,
        seeds=(0,),
        finetune=FinetuneConfig(fractions=(1.0,), max_epochs=1, batch_size=8, max_steps_per_epoch=2),
    )
    out = tmp_path / "controls"
    results = run_controls(setup, out)
    arms = [row["arm"] for row in results["rows"]]
    assert arms == ["msn-vanilla", "random", "supervised", "pixels"]
    by_arm = {row["arm"]: row for row in results["rows"]}
    assert "vs_random" not in by_arm["random"]
    for arm in ("msn-vanilla", "supervised", "pixels"):
        comparison = by_arm[arm]["vs_random"]
        assert comparison["images"] == by_arm["random"]["test_images"]
        assert "p_value_two_sided" in comparison["difference"]
    assert by_arm["msn-vanilla"]["vs_pixels"]["images"] == by_arm["pixels"]["test_images"]
    assert all("vs_pixels" not in by_arm[arm] for arm in ("random", "supervised", "pixels"))

    # The random arm is the weights MSN started from: same architecture and seed, untrained.
    state, metadata = load_checkpoint(
        out / "seed0" / "controls" / "random" / "encoder.safetensors", kind="encoder"
    )
    assert metadata.architecture == "vit_nano_patch8_64" and metadata.extra["method"] == "random-init"
    assert "no pretraining" in metadata.training_data["summary"]
    pretrain_dir = out / "seed0" / "small-vanilla" / "pretrain"
    config = from_dict(json.loads((pretrain_dir / "config.json").read_text()))
    torch.manual_seed(config.train.seed)  # as training.pretrain does before building the networks
    cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    start = build_parts(config, ehr_dim=0, steps_per_epoch=1, dist_info=cpu).anchor.encoder.state_dict()
    assert state.keys() == start.keys() and all(torch.equal(state[k], start[k]) for k in state)

    summary = {entry["arm"]: entry for entry in results["summary"]}
    assert summary["random"]["seeds"] == 1 and "seeds_above_random" not in summary["random"]
    assert summary["pixels"]["seeds_above_random"] in (0, 1)
    table = (out / "results.md").read_text()
    assert table == results_markdown(json.loads((out / "results.json").read_text()))
    assert "| random-init encoder, linear probe | 0 |" in table and "pixel baseline" in table

    # Finished stages are reused; another setup in the same folder is refused.
    mtime = (out / "seed0" / "controls" / "pixels" / "metrics.json").stat().st_mtime_ns
    assert run_controls(setup, out)["rows"] == results["rows"]
    assert (out / "seed0" / "controls" / "pixels" / "metrics.json").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="another control experiment"):
        run_controls(replace(setup, seeds=(1,)), out)
