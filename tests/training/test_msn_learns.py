"""MSN learns, and the learning monitor says so (or says it does not).

On generated images of four shape classes (disc, ring, square, cross at random places, sizes
and brightness on noise), a short MSN run of the nano ViT must raise the monitor's probe of
the EMA target encoder well above its value at initialisation; a run whose learning rate is
too small to move the weights must be reported as not learning. Also: the saved encoder is
the EMA target's encoder, and every anchor view is paired with its own image's target view.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmsn.checkpoint import load_checkpoint
from cxrmsn.labels import LABELS, NUM_LABELS
from tests.helpers import to_png
from training.config import PretrainConfig, apply_overrides
from training.data.dataset import PretrainDataset
from training.data.manifest import ManifestRow, write_manifest
from training.distributed import DistInfo
from training.msn.views import MultiViewTransform
from training.train_step import anchor_inputs, build_parts

REPO = Path(__file__).resolve().parents[2]
SHAPE_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema")  # one label per shape class
# The small recipe's schedule, on the nano ViT with few views: about 15 s on one CPU thread.
SHAPES_RUN = [
    "data.source=manifest",
    "model.arch=vit_nano_patch8_64",
    "views.focal_views=2",
    "loss.num_prototypes=64",
    "train.batch_size=16",
    "train.epochs=20",
    "optim.warmup_epochs=2",
    "monitor.every=5",
    "data.num_workers=0",
    "data.cache_workers=1",
    "train.progress=false",
]


def shape_image(kind: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    image = rng.normal(90, 25, (size, size))
    radius = rng.uniform(7, 14)
    cy, cx = rng.uniform(radius + 2, size - radius - 2, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.hypot(yy - cy, xx - cx)
    shapes = (
        distance < radius,  # disc
        (distance < radius) & (distance > 0.55 * radius),  # ring
        (abs(yy - cy) < 0.8 * radius) & (abs(xx - cx) < 0.8 * radius),  # square
        ((abs(yy - cy) < 0.25 * radius) | (abs(xx - cx) < 0.25 * radius))
        & (distance < 1.2 * radius),  # cross
    )
    image[shapes[kind]] = rng.uniform(170, 240)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", 160), ("valid", 80)):
        for index in range(count):
            kind = index % 4
            name = f"{split}{index}.png"
            (folder / name).write_bytes(to_png(shape_image(kind, rng)))
            labels: list[float | None] = [None] * NUM_LABELS
            for position, label in enumerate(SHAPE_LABELS):
                labels[LABELS.index(label)] = float(kind == position)
            rows.append(
                ManifestRow(
                    path=name,
                    patient_id=f"{split}{index}",
                    split=split,
                    dataset="shapes",
                    labels=tuple(labels),
                )
            )
    write_manifest(folder / "manifest.csv", rows)
    return folder / "manifest.csv"


def pretrain(manifest: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    args = ["pretrain", "--config", "small-vanilla", "--manifest", str(manifest), "--out", str(out)]
    cache = f"data.cache_dir={out.parent / 'cache'}"
    return subprocess.run(
        [sys.executable, "-m", "training", *args, "--set", *SHAPES_RUN, cache, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def monitor_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "monitor.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_msn_learns_shapes_and_the_monitor_shows_it(shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = pretrain(shapes, run)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = monitor_rows(run)
    assert [int(row["epoch"]) for row in rows] == [0, 5, 10, 15, 20]
    initial, final = float(rows[0]["probe_auroc"]), float(rows[-1]["probe_auroc"])
    # seen: 0.62 at initialisation, 0.85-0.89 after 20 epochs
    assert final > initial + 0.1, rows
    assert rows[-1]["status"] == "ok" and int(rows[-1]["probe_labels"]) == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["monitor_status"] == "ok" and summary["monitor"][-1]["probe_auroc"] == pytest.approx(final)

    # The saved encoder is the EMA target's encoder, not the anchor's.
    state, metadata = load_checkpoint(run / "checkpoints" / "encoder.safetensors", kind="encoder")
    saved = torch.load(run / "checkpoints" / "state.pt", weights_only=True)
    target = {k.removeprefix("encoder."): v for k, v in saved["target"].items() if k.startswith("encoder.")}
    anchor = {k.removeprefix("encoder."): v for k, v in saved["anchor"].items() if k.startswith("encoder.")}
    assert state.keys() == target.keys()
    assert all(torch.equal(state[k], target[k]) for k in state)
    assert not all(torch.equal(state[k], anchor[k]) for k in state)
    assert metadata.metrics["monitor_probe_auroc"] == pytest.approx(final)
    assert metadata.metrics["monitor_probe_auroc_at_init"] == pytest.approx(initial)


@pytest.mark.slow
def test_the_monitor_warns_when_a_run_does_not_learn(shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "frozen"
    result = pretrain(shapes, run, "optim.min_lr=0", "optim.lr=1e-9", "train.epochs=4", "monitor.every=2",
                      "monitor.warn_after=4")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = monitor_rows(run)
    assert rows[1]["status"] == "ok"  # epoch 2: too early to say
    assert rows[-1]["status"].startswith("not learning")
    assert "not learning: probe AUROC" in (run / "train.log").read_text()
    assert json.loads((run / "summary.json").read_text())["monitor_status"].startswith("not learning")


def test_every_anchor_view_is_paired_with_its_own_images_target() -> None:
    """Image b is flat grey b/8: every view of it is too, so each row says which image it came from."""
    config = apply_overrides(
        PretrainConfig(),
        ["model.arch=vit_nano_patch8_64", "views.target_size=32", "views.rand_size=32", "views.rand_views=2",
         "views.focal_views=3", "views.focal_size=16", "loss.num_prototypes=8"],
    )  # fmt: skip
    images = np.stack([np.full((40, 40), 30 * b, dtype=np.uint8) for b in range(8)])
    dataset = PretrainDataset(images, np.arange(8), MultiViewTransform(config.views))
    batch = torch.utils.data.default_collate([dataset[b] for b in range(8)])
    cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    parts = build_parts(config, ehr_dim=0, steps_per_epoch=1, dist_info=cpu)
    groups, _ = anchor_inputs(batch, parts)
    target_ids = _image_ids(batch["target"])
    assert target_ids.tolist() == list(range(8))
    for group in groups:  # view-major: row v * B + b is view v of image b, as msn_loss pairs them
        ids = _image_ids(group)
        assert ids.tolist() == target_ids.repeat(len(ids) // 8).tolist()


def _image_ids(views: torch.Tensor) -> torch.Tensor:
    """Which flat image each normalised view came from (first channel, ImageNet red mean/std)."""
    grey = views[:, 0].flatten(1).mean(dim=1) * 0.229 + 0.485
    return torch.round(grey * 255 / 30).long()
