"""The experiment runner end to end: two tiny pretrainings, two linear evaluations, one table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.training.downstream.fixtures import small_config
from training.downstream.experiment import Experiment, results_markdown, run_experiment

pytestmark = pytest.mark.slow

# vit_nano with the paper's 224 px target view (what the classifier takes), few small anchor views.
TINY = (
    "model.arch=vit_nano_patch16_224",
    "views.focal_views=1",
    "views.focal_size=32",
    "data.cache_size=232",
    "data.cache_workers=1",
    "data.num_workers=0",
    "loss.num_prototypes=16",
    "ehr.imputer_trees=5",
    "ehr.imputer_max_iter=2",
    "train.batch_size=8",
    "train.epochs=1",
    "train.progress=false",
)


def test_vanilla_against_an_ehr_variant(manifest: Path, tmp_path: Path) -> None:
    downstream = small_config(manifest, tmp_path / "cache", max_epochs=5)
    experiment = Experiment(
        backbone="vit_t",
        variants=("vanilla", "D"),
        data=("data.source=manifest", f"data.manifest={manifest}", f"data.cache_dir={tmp_path / 'images'}"),
        pretrain_overrides=TINY,
        downstream=downstream,
    )
    out = tmp_path / "experiment"
    results = run_experiment(experiment, out)
    vanilla, ehr = results["rows"]
    assert (vanilla["variant"], ehr["variant"]) == ("vanilla", "D")
    assert vanilla["ehr_features"] == [] and ehr["ehr_features"] == ["age", "sex"]
    assert "vs_baseline" not in vanilla and ehr["vs_baseline"]["labels"] == ehr["test_macro_labels"]
    for variant in ("vanilla", "D"):
        config = json.loads((out / f"vit_t-{variant}" / "linear" / "config.json").read_text())
        assert config["data"]["source"] == "encoder" and config["seed"] == 0
        pretrain = json.loads((out / f"vit_t-{variant}" / "pretrain" / "config.json").read_text())
        assert pretrain["train"]["seed"] == 0 and pretrain["model"]["arch"] == "vit_nano_patch16_224"
    table = (out / "results.md").read_text()
    assert "| vit_t | MSN (vanilla) | 1 |" in table and "| vit_t | MSN + D | 1 |" in table
    assert table == results_markdown(json.loads((out / "results.json").read_text()))
    # a finished experiment is not run again; another experiment in the same folder is refused
    mtime = (out / "vit_t-D" / "linear" / "metrics.json").stat().st_mtime_ns
    assert run_experiment(experiment, out) == results
    assert (out / "vit_t-D" / "linear" / "metrics.json").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="another experiment"):
        run_experiment(replace(experiment, seed=1), out)
