"""``python -m export`` (the same program as ``cxr-msn export``), run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cxrmsn.fileio import sha256_file
from cxrmsn.repository import read_manifest
from tests.export.conftest import save_classifier

REPO_ROOT = Path(__file__).resolve().parents[2]


def export(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "export", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def staging_left(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_help_explains_every_option() -> None:
    result = export("--help")
    assert result.returncode == 0
    for option in (
        "--out",
        "--variants",
        "--validation-manifest",
        "--max-batch-size",
        "--ort-optimised",
        "--overwrite",
        "--min-auroc-lower-bound",
        "--run-metrics",
    ):
        assert option in result.stdout
    assert "python-backend twin" in result.stdout


def test_export_then_refuse_to_overwrite_without_the_flag(nano_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model_repository"
    result = export(nano_checkpoint, "--out", out, "--variants", "int8", "--ort-optimised", "never")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(out)
    assert sorted(manifest.models) == ["fp32", "int8"]
    assert manifest.models["int8"].notes["auroc"] == "not measured: no --validation-manifest was given"
    assert manifest.models["int8"].notes["compared_on"] == "16 generated inputs"
    assert "cxr_msn_int8/1/model.onnx" in result.stdout

    again = export(nano_checkpoint, "--out", out, "--variants", "fp32")
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    assert sorted(read_manifest(out).models) == ["fp32", "int8"]


def test_a_failed_export_leaves_the_previous_repository_untouched(
    nano_checkpoint: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from export.build import ExportOptions, export_repository
    from export.errors import ExportError

    out = tmp_path / "model_repository"
    export_repository(nano_checkpoint, out, ExportOptions(variants=("fp32",), ort_optimised="never"))
    before = sha256_file(out / "manifest.json")

    diverged = tmp_path / "diverged.safetensors"  # a training run that blew up: NaN in the head
    tensors = load_file(str(nano_checkpoint))
    tensors["head.bias"] = torch.full_like(tensors["head.bias"], float("nan"))
    with safe_open(str(nano_checkpoint), framework="pt") as handle:
        save_file(tensors, str(diverged), metadata=handle.metadata())

    result = export(diverged, "--out", out, "--overwrite", "--ort-optimised", "never")
    assert result.returncode == 1
    assert "self-check failed, nothing written" in result.stderr and "not finite" in result.stderr
    assert sha256_file(out / "manifest.json") == before
    assert staging_left(tmp_path) == []

    fresh = tmp_path / "fresh"
    with pytest.raises(ExportError, match="not finite"):
        export_repository(diverged, fresh, ExportOptions(variants=("fp32",), ort_optimised="never"))
    assert not fresh.exists() and staging_left(tmp_path) == []


@pytest.mark.parametrize("case", ["encoder", "foreign_folder", "bad_variant", "missing"])
def test_bad_input_exits_2_with_a_reason(nano_checkpoint: Path, tmp_path: Path, case: str) -> None:
    from cxrmsn.checkpoint import CheckpointMetadata, load_checkpoint, save_checkpoint

    out = tmp_path / "out"
    checkpoint = nano_checkpoint
    expected = {
        "encoder": "holds an encoder without a trained head",
        "foreign_folder": "is not a cxr-msn model repository: refusing to replace it",
        "bad_variant": "variants must include fp32 and come from",
        "missing": "does not exist",
    }[case]
    if case == "encoder":
        state, _ = load_checkpoint(nano_checkpoint)
        encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        checkpoint = tmp_path / "encoder.safetensors"
        save_checkpoint(
            checkpoint, encoder, CheckpointMetadata(architecture="vit_nano_patch16_224", kind="encoder")
        )
    elif case == "foreign_folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "missing":
        checkpoint = tmp_path / "absent.safetensors"
    args = ["--variants", "fp32,fp64"] if case == "bad_variant" else []
    result = export(checkpoint, "--out", out, *args)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    if case == "foreign_folder":
        assert (out / "notes.txt").read_text() == "mine"
    else:
        assert not out.exists()


def test_save_classifier_helper_writes_distinct_models(tmp_path: Path) -> None:
    a = save_classifier(tmp_path / "a.safetensors", seed=1)
    b = save_classifier(tmp_path / "b.safetensors", seed=2)
    assert sha256_file(a) != sha256_file(b)


def test_preprocessing_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
    from cxrmsn.model import CXRClassifier
    from cxrmsn.preprocess import PreprocessConfig
    from export.build import export_repository

    checkpoint = tmp_path / "small_crop.safetensors"
    preprocessing = PreprocessConfig(resize=192, crop=192).to_dict()
    metadata = CheckpointMetadata(architecture="vit_nano_patch16_224", preprocessing=preprocessing)
    save_checkpoint(checkpoint, CXRClassifier("vit_nano_patch16_224").state_dict(), metadata)
    with pytest.raises(ValueError, match="crops 192 px but vit_nano_patch16_224 takes 224 px"):
        export_repository(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists() and staging_left(tmp_path) == []
