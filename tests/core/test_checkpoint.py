"""The core checkpoint format: exact round trip and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrmsn.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    load_checkpoint,
    load_classifier,
    read_metadata,
    save_checkpoint,
)
from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier

ARCH = "vit_nano_patch16_224"


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, CXRClassifier, CheckpointMetadata]:
    torch.manual_seed(0)
    model = CXRClassifier(ARCH)
    metadata = CheckpointMetadata(
        architecture=ARCH,
        trained_labels=["Cardiomegaly", "No Finding"],
        thresholds={"Cardiomegaly": 0.31, "No Finding": 0.55},
        training_data={"summary": "test", "images": 3},
        metrics={"macro_auroc": 0.5},
    )
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, model.state_dict(), metadata)
    return path, model, metadata


def test_round_trip_is_exact(saved: tuple[Path, CXRClassifier, CheckpointMetadata]) -> None:
    path, model, metadata = saved
    loaded, loaded_metadata = load_classifier(path)
    assert loaded_metadata == metadata
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), loaded(images), atol=0, rtol=0)


Saved = tuple[Path, CXRClassifier, CheckpointMetadata]


def test_metadata_is_readable_without_the_weights(saved: Saved) -> None:
    metadata = read_metadata(saved[0])
    assert metadata.labels == list(LABELS) and metadata.format_version == 1
    assert "not for clinical use" in metadata.intended_use


def test_wrong_architecture_is_refused(saved: tuple[Path, CXRClassifier, CheckpointMetadata]) -> None:
    with pytest.raises(CheckpointError, match="not the expected vit_small_patch16_224"):
        load_classifier(saved[0], architecture="vit_small_patch16_224")


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "lie.safetensors"
    weights = CXRClassifier("vit_nano_patch16_224").state_dict()
    save_checkpoint(path, weights, CheckpointMetadata(architecture="vit_tiny_patch16_224"))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_classifier(path)


def test_other_labels_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="14 CheXpert labels"):
        CheckpointMetadata(architecture=ARCH, labels=["Cardiomegaly"])
    # A file written by something else with other labels in its metadata.
    path = tmp_path / "other.safetensors"
    save_checkpoint(path, {"w": torch.zeros(1)}, CheckpointMetadata(architecture=ARCH))
    text = path.read_bytes().replace(b"Atelectasis", b"Atelectasys")  # same length: header stays valid
    path.write_bytes(text)
    with pytest.raises(CheckpointError, match="invalid metadata"):
        load_checkpoint(path)


def test_missing_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(junk)


def test_save_is_atomic(tmp_path: Path, saved: tuple[Path, CXRClassifier, CheckpointMetadata]) -> None:
    path, _model, metadata = saved
    before = path.read_bytes()

    class Boom(dict[str, torch.Tensor]):
        def items(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, Boom(), metadata)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]
