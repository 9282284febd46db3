"""End-to-end pretraining runs as real processes: run folder, resume after SIGKILL, DDP, shared data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmsn.checkpoint import load_checkpoint, load_state_strictly
from cxrmsn.labels import NUM_LABELS
from cxrmsn.model import create_encoder
from tests.helpers import chest_like_picture, requires_shared_data, to_png
from training.data.manifest import ManifestRow, write_manifest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # see conftest.py: fast and predictable on a shared CPU

# vit_nano at 64 px (16 patches) with 32 px focal views (4 patches): seconds per epoch on a CPU.
TINY = [
    "model.arch=vit_nano_patch16_224",
    "views.target_size=64",
    "views.rand_size=64",
    "views.focal_size=32",
    "views.focal_views=2",
    "data.cache_size=72",
    "data.cache_workers=1",
    "loss.num_prototypes=32",
    "ehr.features=D",
    "ehr.imputer_trees=5",
    "train.batch_size=4",
    "train.progress=false",
]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ONE_THREAD},
    )


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    rows = []
    for i in range(20):
        (folder / f"{i}.png").write_bytes(to_png(chest_like_picture(80, 72, seed=i)))
        rows.append(
            ManifestRow(
                path=str(folder / f"{i}.png"),
                patient_id=f"p{i // 2}",
                split="test" if i >= 16 else "train",
                dataset="generated",
                age=None if i % 5 == 0 else 30.0 + 2 * i,
                sex="" if i % 7 == 0 else "MF"[i % 2],
                labels=(1.0,) + (None,) * (NUM_LABELS - 1),
            )
        )
    write_manifest(folder / "manifest.csv", rows)
    return folder / "manifest.csv"


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard log folder, read back as TensorBoard reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every value
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _args(manifest: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "pretrain", "--config", "smoke", "--manifest", str(manifest), "--out", str(out),
        "--set", *TINY, f"data.cache_dir={cache}", *extra,
    ]  # fmt: skip


def test_a_run_writes_its_folder_and_a_core_encoder_checkpoint(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli(*_args(manifest, out, tmp_path / "cache", "train.epochs=2", "train.log_every=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.json", "version.json", "metrics.csv", "steps.csv", "train.log", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "ehr" / "imputer.joblib").is_file() and list((out / "tensorboard").glob("events.*"))
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["arch"] == "vit_nano_patch16_224" and config["ehr"]["features"] == ["D"]
    assert config["data"]["manifest"] == str(manifest) and config["data"]["source"] == "manifest"
    version = json.loads((out / "version.json").read_text())
    assert version["git_commit"] and version["git_describe"]  # this checkout is a git repository
    assert torch.__version__.startswith(version["packages"]["torch"])
    epochs = (out / "metrics.csv").read_text().splitlines()
    assert len(epochs) == 3 and epochs[1].startswith("1,") and epochs[2].startswith("2,")
    assert len((out / "steps.csv").read_text().splitlines()) == 1 + 2 * 4  # 16 training images / 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["finished"] == "epochs" and summary["data"]["images"] == 16
    assert np.isfinite(summary["final_loss"]) and summary["peak_rss_mb"] > 0
    scalars = tensorboard_scalars(out / "tensorboard")  # TensorBoard stores float32
    history = torch.load(out / "checkpoints" / "state.pt", weights_only=True)["history"]
    assert [step for step, _ in scalars["epoch/loss"]] == [3, 7]  # the last step of each epoch
    assert [v for _, v in scalars["epoch/loss"]] == pytest.approx([h["loss"] for h in history], rel=1e-6)
    assert scalars["epoch/loss"][-1][1] == pytest.approx(summary["final_loss"], rel=1e-6)
    assert [step for step, _ in scalars["step/loss"]] == list(range(8)) and "step/lr" in scalars

    state, metadata = load_checkpoint(out / "checkpoints" / "encoder.safetensors", kind="encoder")
    assert (
        metadata.architecture == "vit_nano_patch16_224" and metadata.extra["weights"] == "EMA target encoder"
    )
    assert metadata.preprocessing["crop"] == 64 and metadata.extra["ehr_features"] == ["age", "sex"]
    assert metadata.training_data["images"] == 16
    encoder = create_encoder("vit_nano_patch16_224")
    load_state_strictly(encoder, state, source="test")
    initial = create_encoder("vit_nano_patch16_224").state_dict()  # training moved the weights
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], initial["blocks.0.attn.qkv.weight"])

    again = run_cli(*_args(manifest, out, tmp_path / "cache"))
    assert again.returncode == 2 and "--resume" in again.stderr


def test_a_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(
    manifest: Path, tmp_path: Path
) -> None:
    cache, epochs = tmp_path / "cache", "train.epochs=5"
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "training", *_args(manifest, killed, cache, epochs)],
        cwd=REPO,
        env={**os.environ, **ONE_THREAD},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state_file = killed / "checkpoints" / "state.pt"
    deadline = time.monotonic() + 240
    while not state_file.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.stderr is not None
    process.stderr.close()
    assert not (killed / "summary.json").exists()
    done_before_kill = torch.load(state_file, weights_only=True)["epoch"]
    assert 1 <= done_before_kill < 5

    resumed = run_cli("pretrain", "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in (killed / "train.log").read_text()
    straight = tmp_path / "straight"
    assert run_cli(*_args(manifest, straight, cache, epochs)).returncode == 0

    a, _ = load_checkpoint(killed / "checkpoints" / "encoder.safetensors")
    b, _ = load_checkpoint(straight / "checkpoints" / "encoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (killed / "metrics.csv").read_text().count("\n") == 6  # header + 5 epochs, none twice
    losses = [line.split(",")[1] for line in (killed / "metrics.csv").read_text().splitlines()[1:]]
    assert losses == [line.split(",")[1] for line in (straight / "metrics.csv").read_text().splitlines()[1:]]


def test_resume_refuses_new_settings(tmp_path: Path) -> None:
    result = run_cli("pretrain", "--out", str(tmp_path), "--resume", "--set", "optim.lr=1")
    assert result.returncode == 2 and "config.json" in result.stderr


def test_two_ddp_processes_end_with_identical_weights(manifest: Path, tmp_path: Path) -> None:
    """A real 2-process torchrun run finishes and both ranks hold the same weights.

    DDP averages gradients and buffers are broadcast before each checkpoint, so equal weights
    are close to guaranteed once the run completes; that the 2-rank step equals one process
    on the global batch is tested in test_distributed_loss.py.
    """
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "training", *_args(manifest, out, tmp_path / "cache", "train.epochs=2"),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ONE_THREAD},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["rank_state_sha256"]) == 2
    assert summary["ranks_identical"] is True
    assert len((out / "steps.csv").read_text().splitlines()) > 1
    # 16 images, global batch 4 = 2 per rank: 4 steps per epoch, as on one process.
    assert "4 steps per epoch, world size 2" in (out / "train.log").read_text()


@requires_shared_data
def test_shared_data_run_builds_its_manifest_with_both_sets(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    result = run_cli(
        "pretrain", "--config", "smoke", "--out", str(out),
        "--set", *TINY, "data.max_images=24", "ehr.features=all", f"data.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "manifest.csv").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["data"]["datasets"]) == {"covid", "nih1000"} and summary["data"]["images"] == 24
    encoding = json.loads((out / "ehr" / "encoding.json").read_text())
    assert len(encoding["columns"]) == 11 and encoding["fit_summary"]["rows"] > 700
