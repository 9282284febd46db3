"""The DINO and MAE baselines: each loss against its reference maths, the networks' contracts,
their named configs and a real pretraining run of each writing the core encoder checkpoint."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrmsn.checkpoint import load_checkpoint, load_state_strictly
from cxrmsn.model import create_encoder
from tests.training.pretrain_fixtures import CPU, NANO_RUN, write_pretrain_manifest
from training.baselines.dino import DINOStudent, prototype_logits, size_groups
from training.baselines.dino_loss import dino_loss, teacher_temperature, update_center_
from training.baselines.mae import MAEModel, sincos_2d
from training.baselines.mae_loss import mae_loss, masked_from_keep, patchify
from training.config import MAEConfig, PretrainConfig, apply_overrides
from training.configs import config_names, named_config
from training.pretrain import pretrain
from training.train_step import TrainParts, _forward, build_parts, train_step

E = math.e

# DINO ---------------------------------------------------------------------------------------


def reference_dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    crops: int,
    s_temp: float,
    t_temp: float,
) -> torch.Tensor:
    """facebookresearch/dino's DINOLoss.forward, transcribed (two global crops)."""
    student_out = (student / s_temp).chunk(crops)
    teacher_out = F.softmax((teacher - center) / t_temp, dim=-1).detach().chunk(2)
    total, terms = torch.zeros(()), 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            total = total + torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


def test_dino_loss_by_hand_on_two_prototypes() -> None:
    # One image, two global views (teacher and student) and one local view (student), K = 2.
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    teacher = torch.tensor([[0.2, 0.0], [0.0, 0.1]])
    center = torch.tensor([[0.1, 0.0]])
    # teacher view 0: softmax(((0.2, 0) - (0.1, 0)) / 0.1) = softmax(1, 0); view 1: softmax(-1, 1)
    q0 = [E / (E + 1), 1 / (E + 1)]
    q1 = [E**-1 / (E**-1 + E), E / (E**-1 + E)]

    def log_p(logits: list[float]) -> list[float]:  # log_softmax(logits / 0.5)
        scaled = [x / 0.5 for x in logits]
        norm = math.log(sum(math.exp(x) for x in scaled))
        return [x - norm for x in scaled]

    views = [log_p([1.0, 0.0]), log_p([0.0, 1.0]), log_p([0.5, 0.5])]

    def ce(q: list[float], lp: list[float]) -> float:
        return -sum(a * b for a, b in zip(q, lp, strict=True))

    expected = (ce(q0, views[1]) + ce(q0, views[2]) + ce(q1, views[0]) + ce(q1, views[2])) / 4
    out = dino_loss(student, teacher, center, global_views=2, student_temp=0.5, teacher_temp=0.1)
    assert float(out.loss) == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(out.teacher_probabilities[0], torch.tensor(q0), atol=1e-6)


def test_dino_loss_matches_the_reference_implementation() -> None:
    generator = torch.Generator().manual_seed(0)
    batch, crops, prototypes = 3, 5, 7
    student = torch.randn(crops * batch, prototypes, generator=generator, requires_grad=True)
    teacher = torch.randn(2 * batch, prototypes, generator=generator)
    center = torch.randn(1, prototypes, generator=generator) * 0.1
    ours = dino_loss(student, teacher, center, global_views=2, student_temp=0.1, teacher_temp=0.04)
    reference = reference_dino_loss(student, teacher, center, crops, 0.1, 0.04)
    assert float(ours.loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    (ours_grad,) = torch.autograd.grad(ours.loss, student)
    (reference_grad,) = torch.autograd.grad(reference, student)
    torch.testing.assert_close(ours_grad, reference_grad)
    teacher.requires_grad_(True)  # the teacher branch takes no gradient
    assert dino_loss(student, teacher, center, global_views=2).loss.grad_fn is not None
    dino_loss(student, teacher, center, global_views=2).loss.backward()
    assert teacher.grad is None


def test_dino_centre_update_and_teacher_temperature_schedule() -> None:
    center = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0], [2.0, 4.0]])  # mean (1, 3)
    update_center_(center, teacher, 0.9)
    assert torch.allclose(center, torch.tensor([[0.9 * 1 + 0.1 * 1, 0.1 * 3]]))
    schedule = np.linspace(0.04, 0.07, 30)  # DINO's warm-up
    for epoch in (0, 1, 17, 29):
        assert teacher_temperature(epoch, start=0.04, end=0.07, warmup_epochs=30) == pytest.approx(
            schedule[epoch]
        )
    assert teacher_temperature(30, start=0.04, end=0.07, warmup_epochs=30) == 0.07
    assert teacher_temperature(0, start=0.04, end=0.07, warmup_epochs=0) == 0.07


@pytest.mark.parametrize(
    ("student_rows", "teacher_rows", "global_views"),
    [(6, 4, 3), (5, 4, 2), (2, 4, 2)],  # 4 rows are not 3 views; 5 rows are not views of 2; too few
)
def test_dino_loss_refuses_inconsistent_views(
    student_rows: int, teacher_rows: int, global_views: int
) -> None:
    with pytest.raises(ValueError):
        dino_loss(
            torch.randn(student_rows, 3),
            torch.randn(teacher_rows, 3),
            torch.zeros(1, 3),
            global_views=global_views,
        )


def test_dino_logits_are_cosines_with_the_prototypes_and_views_group_by_size() -> None:
    projections, prototypes = torch.randn(4, 6), torch.randn(5, 6) * 3
    logits = prototype_logits(projections, prototypes)
    expected = F.cosine_similarity(projections[:, None], prototypes[None], dim=-1)
    torch.testing.assert_close(logits, expected)
    views = [torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 4, 4)]
    groups = size_groups(views)
    assert [g.shape[0] for g in groups] == [4, 2] and torch.equal(groups[0][2:], views[1])


def _dino_parts() -> tuple[TrainParts, dict[str, torch.Tensor]]:
    config = apply_overrides(
        PretrainConfig(),
        [
            "method=dino",
            "model.arch=vit_nano_patch8_64",
            "views.target_size=64",
            "views.rand_size=64",
            "views.focal_size=32",
            "views.focal_views=2",
            "dino.head_hidden=32",
            "dino.bottleneck=8",
            "dino.num_prototypes=16",
            "train.epochs=2",
        ],
    )
    torch.manual_seed(0)
    parts = build_parts(config, ehr_dim=0, steps_per_epoch=2, dist_info=CPU)
    generator = torch.Generator().manual_seed(1)
    batch = {
        "target": torch.randn(4, 3, 64, 64, generator=generator),
        "rand": torch.randn(4, 1, 3, 64, 64, generator=generator),
        "focal": torch.randn(4, 2, 3, 32, 32, generator=generator),
        "ehr": torch.zeros(4, 0),
    }
    return parts, batch


def test_a_dino_step_freezes_the_last_layer_first_then_moves_the_teacher_by_ema() -> None:
    parts, batch = _dino_parts()
    student, teacher = parts.anchor, parts.target
    assert isinstance(student, DINOStudent) and student.fusion is None and teacher is not None
    prototypes = student.prototypes.detach().clone()
    before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    stats = train_step(parts, batch, step=0)
    assert set(stats) >= {"loss", "cross_entropy", "mean_entropy", "target_max", "agreement", "momentum"}
    assert torch.equal(student.prototypes, prototypes)  # frozen during epoch 1 (DINO's freeze_last_layer)
    assert float(student.center.abs().sum()) > 0  # the centre moved towards the teacher's mean
    anchor = dict(student.named_parameters())
    for name, value in teacher.named_parameters():  # the teacher, prototypes included, is the EMA
        torch.testing.assert_close(value, 0.996 * before[name] + 0.004 * anchor[name])
    train_step(parts, batch, step=2)  # epoch 2: the last layer trains
    assert not torch.equal(student.prototypes, prototypes)


# MAE ----------------------------------------------------------------------------------------


def test_patchify_is_maes_layout() -> None:
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    patches = patchify(images, 2)  # a 2 x 3 grid of 2 px patches, 2 * 2 * 3 values each
    assert patches.shape == (2, 6, 12)
    for n in range(2):
        for i in range(2):
            for j in range(3):
                expected = [
                    float(images[n, c, i * 2 + py, j * 2 + px])
                    for py in range(2)
                    for px in range(2)
                    for c in range(3)
                ]
                assert patches[n, i * 3 + j].tolist() == expected


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_mae_loss_matches_the_reference_maths(norm_pix_loss: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 8, 8, generator=generator)
    predictions = torch.randn(2, 4, 4 * 4 * 3, generator=generator)
    keep = torch.tensor([[0], [3]])
    masked = masked_from_keep(keep, 4)
    assert masked.tolist() == [[0, 1, 1, 1], [1, 1, 1, 0]]
    total, count = 0.0, 0
    pixels = images.numpy().astype(np.float64)
    for n in range(2):
        for patch in range(4):
            if patch == int(keep[n, 0]):
                continue  # kept patches carry no loss
            i, j = divmod(patch, 2)
            target = pixels[n, :, i * 4 : i * 4 + 4, j * 4 : j * 4 + 4].transpose(1, 2, 0).reshape(-1)
            if norm_pix_loss:
                target = (target - target.mean()) / math.sqrt(target.var(ddof=1) + 1e-6)
            total += float(np.mean((predictions[n, patch].numpy() - target) ** 2))
            count += 1
    loss = mae_loss(predictions, images, masked, patch=4, norm_pix_loss=norm_pix_loss)
    assert float(loss) == pytest.approx(total / count, rel=1e-5)


def test_mae_predictions_ignore_the_hidden_patches_and_kept_patches_get_no_loss() -> None:
    torch.manual_seed(0)
    model = MAEModel("vit_nano_patch8_64", decoder_dim=32, decoder_depth=1, decoder_heads=2, mask_ratio=0.75)
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    keep = model.sample_keep(images)
    assert keep.shape == (2, 16)  # 64 patches, 75 % hidden
    predictions = model(images, keep)
    assert predictions.shape == (2, 64, 8 * 8 * 3)
    hidden = int(masked_from_keep(keep, 64)[0].nonzero()[0])
    i, j = divmod(hidden, 8)
    changed = images.clone()
    changed[0, :, i * 8 : i * 8 + 8, j * 8 : j * 8 + 8] += 5.0  # only a hidden patch changes
    torch.testing.assert_close(model(changed, keep), predictions)
    kept = int(keep[0, 0])
    i, j = divmod(kept, 8)
    changed = images.clone()
    changed[0, :, i * 8 : i * 8 + 8, j * 8 : j * 8 + 8] += 5.0
    assert not torch.allclose(model(changed, keep)[0], predictions[0])
    # The loss gradient reaches the hidden patches' predictions only.
    predictions = predictions.detach().requires_grad_(True)
    masked = masked_from_keep(keep, 64)
    mae_loss(predictions, images, masked, patch=8, norm_pix_loss=True).backward()
    assert predictions.grad is not None
    assert float(predictions.grad[masked == 0].abs().sum()) == 0.0
    assert float(predictions.grad[masked == 1].abs().sum()) > 0.0


def test_decoder_position_embeddings_are_maes_sincos() -> None:
    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:  # MAE's get_1d_sincos_pos_embed_from_grid
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    columns, rows = np.meshgrid(np.arange(3, dtype=np.float32), np.arange(3, dtype=np.float32))  # w first
    reference = np.concatenate([one_d(8, columns), one_d(8, rows)], axis=1)
    assert np.allclose(sincos_2d(16, 3).numpy(), reference, atol=1e-6)


# Configs and runs ---------------------------------------------------------------------------


def test_named_baseline_configs() -> None:
    names = config_names()
    for backbone in ("vit_t", "vit_s", "small"):
        for method in ("dino", "mae"):
            assert f"{backbone}-{method}" in names
            config = named_config(f"{backbone}-{method}")
            assert config.method == method and config.ehr.features == ()
    vanilla, dino, mae = (named_config(f"small-{m}") for m in ("vanilla", "dino", "mae"))
    assert dino.optim == vanilla.optim and dino.train == vanilla.train and dino.views == vanilla.views
    assert mae.views.focal_views == 0 and mae.mae.mask_ratio == 0.75
    assert named_config("vit_t-dino").dino.num_prototypes == 65536
    with pytest.raises(ValueError, match="image-only"):
        apply_overrides(named_config("vit_t-D"), ["method=dino"])
    with pytest.raises(ValueError, match="method"):
        apply_overrides(PretrainConfig(), ["method=simclr"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dino", "mae"])
def test_a_baseline_run_writes_the_core_encoder_checkpoint(method: str, tmp_path: Path) -> None:
    manifest = write_pretrain_manifest(tmp_path / "data")
    config = apply_overrides(
        PretrainConfig(),
        [
            *NANO_RUN,
            f"method={method}",
            f"data.manifest={manifest}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "dino.head_hidden=32",
            "dino.bottleneck=8",
            "dino.num_prototypes=16",
            "mae.decoder_dim=32",
            "mae.decoder_depth=1",
            "mae.decoder_heads=2",
            "train.epochs=2",
            "monitor.every=1",
        ],
    )
    out = tmp_path / "run"
    summary = pretrain(config, out)
    assert summary["method"] == method and summary["epochs"] == 2 and np.isfinite(summary["final_loss"])
    assert len(summary["monitor"]) == 3 and summary["monitor"][-1]["probe_labels"] == 1
    state, metadata = load_checkpoint(out / "checkpoints" / "encoder.safetensors", kind="encoder")
    assert metadata.extra["method"] == method and metadata.architecture == "vit_nano_patch8_64"
    load_state_strictly(create_encoder("vit_nano_patch8_64"), state, source="test")
    saved = torch.load(out / "checkpoints" / "state.pt", weights_only=True)
    kept = saved["target"] if method == "dino" else saved["anchor"]  # DINO keeps its EMA teacher
    assert ("target" in saved) == (method == "dino")
    encoder = {k.removeprefix("encoder."): v for k, v in kept.items() if k.startswith("encoder.")}
    assert encoder.keys() == state.keys() and all(torch.equal(encoder[k], state[k]) for k in state)
    columns = (out / "metrics.csv").read_text().splitlines()
    assert len(columns) == 3
    if method == "mae":
        assert summary["monitor"][-1]["prototypes_used"] == ""
        assert metadata.extra["weights"].startswith("encoder")


@pytest.mark.parametrize("method", ["dino", "mae"])
def test_baseline_losses_run_under_bfloat16_autocast(method: str) -> None:
    """CUDA runs compute in bfloat16 (train.amp); CPU autocast exercises the same dtype mixing."""
    parts, batch = _dino_parts()
    if method == "mae":
        config = replace(
            parts.config, method="mae", mae=MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2)
        )
        torch.manual_seed(0)
        parts = build_parts(config, ehr_dim=0, steps_per_epoch=2, dist_info=CPU)
    parts.amp_dtype = torch.bfloat16
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss, _ = _forward(parts, batch, 0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
