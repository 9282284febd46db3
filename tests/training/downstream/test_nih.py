"""The paper's NIH protocol: a linear head trained and tested on an NIH-format manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.downstream.fixtures import small_config
from tests.training.test_builders import _nih_root
from training.data.manifest import write_manifest
from training.data.nih import build_nih
from training.downstream.linear_eval import linear_eval

pytestmark = pytest.mark.slow
NOT_IN_NIH = ("Enlarged Cardiomediastinum", "Fracture", "Lung Opacity", "Pleural Other", "Support Devices")


def test_head_trained_and_tested_on_nih(encoder_file: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "nih.csv"
    write_manifest(manifest, build_nih(_nih_root(tmp_path), valid_fraction=0.4, seed=0))
    metrics = linear_eval(
        encoder_file, small_config(manifest, tmp_path / "cache", max_epochs=3), tmp_path / "nih"
    )
    for label in NOT_IN_NIH:  # blank in NIH: masked everywhere, never negatives
        assert metrics["label_masks"]["train"][label]["counted"] == 0
        assert metrics["test"]["per_label"][label]["reason"] == "not annotated in the test split"
        assert label not in metrics["trained_labels"]
    # NIH's nine mapped findings are 1/0 on every image
    assert (
        metrics["label_masks"]["train"]["Cardiomegaly"]["counted"]
        == metrics["training_data"]["splits"]["train"]["images"]
    )
    assert set(metrics["test"]["macro"]["labels"]) <= set(metrics["trained_labels"])
