"""Fine-tuning (the paper's secondary protocol): the whole classifier trained, encoder unfrozen,
on 1 %, 5 %, 10 % and 100 % of the training labels.

For each fraction the training split is cut down by whole patients (seeded, the same subset
for every encoder given the seed; ``training.downstream.data.patient_subset``); valid and test
are unchanged. The encoder starts from the pretrained EMA target encoder and the head from a
seeded initialisation; Adam with cosine annealing over ``finetune.max_epochs`` and early
stopping on the validation macro AUROC (patience 5, min delta 1e-4), keeping the best epoch.

Epochs read the uint8 image cache of ``training.data.cache`` (squares of the checkpoint's
``resize``): training views get the paper's augmentation (flip, random affine, centre crop),
validation during training the plain view from the cache (it differs from the inference view
only by 8-bit rounding of the resized image). The final valid and test predictions, the
thresholds and the metrics use the exact inference path (``training.downstream.predict``).

Folder: ``OUT/fraction_<f>/`` holds what linear evaluation writes (classifier.safetensors,
metrics.json, predictions/); ``OUT/summary.json`` and ``OUT/summary.md`` tabulate the fractions.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrmsn.fileio import atomic_write_text
from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier
from training.data.cache import load_or_build_cache
from training.distributed import resolve_device
from training.downstream.artifact import (
    Predictions,
    RunOutputs,
    finish,
    selection_columns,
    start_output,
    trained_labels,
)
from training.downstream.config import DownstreamConfig, with_fraction
from training.downstream.data import (
    DownstreamData,
    data_summary,
    prepare_data,
    pretraining_overlap,
    resolve_manifest,
)
from training.downstream.embeddings import Encoder, load_encoder
from training.downstream.images import CachedViews
from training.downstream.linear import masked_bce
from training.downstream.linear_eval import encoder_summary
from training.downstream.metrics import macro_auroc
from training.downstream.predict import predict_files
from training.early_stopping import EarlyStopping
from training.run_folder import write_json

log = logging.getLogger(__name__)


def finetune(encoder_path: Path, config: DownstreamConfig, out: Path) -> dict[str, Any]:
    """Every fraction of ``finetune.fractions`` into ``out/fraction_<f>``; returns the summary."""
    if (out / "summary.json").is_file():
        raise ValueError(f"{out} already holds results (summary.json): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", _to_dict(config))
    encoder = load_encoder(encoder_path)
    manifest = resolve_manifest(config, out, encoder.metadata)
    rows = []
    for fraction in config.finetune.fractions:
        folder = out / f"fraction_{fraction:g}"
        if (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())
        else:
            metrics = finetune_fraction(encoder_path, with_fraction(config, fraction), manifest, folder)
        rows.append(_summary_row(fraction, metrics))
    summary = {"encoder": encoder_summary(encoder), "fractions": rows}
    write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(rows))
    return summary


def _to_dict(config: DownstreamConfig) -> dict[str, Any]:
    from training.downstream.config import config_to_dict

    return config_to_dict(config)


def finetune_fraction(
    encoder_path: Path, config: DownstreamConfig, manifest: Path, out: Path
) -> dict[str, Any]:
    started = time.perf_counter()
    start_output(out, config)
    encoder = load_encoder(encoder_path)
    data = prepare_data(config, manifest)
    device = resolve_device(config.device)
    images, indices = _cache(encoder, data, config)
    trained = trained_labels(data.labels["train"])
    columns = selection_columns(trained, data.labels["valid"])
    if not columns:
        raise ValueError("no trained label has positives and negatives in valid: nothing to select on")
    log.info(
        "fine-tuning on %.0f %% of the training labels: %d images of %d patients",
        100 * config.data.label_fraction,
        len(data.rows["train"]),
        len({(r.dataset, r.patient_id) for r in data.rows["train"]}),
    )
    model, history, best_epoch, stopped = train_classifier(
        encoder, data, images, indices, columns, config, device
    )
    model = model.cpu()
    predictions = _final_predictions(model, data, images, indices["train"], encoder, config, device)
    outputs = RunOutputs(
        protocol="finetune",
        model=model,
        preprocessing=encoder.preprocessing,
        trained=trained,
        predictions=predictions,
        training_data=data_summary(data, config),
        protocol_details={
            "label_fraction": config.data.label_fraction,
            "selected_run": f"finetune_lr{config.finetune.lr:g}",
            "selection": "the epoch with the highest validation macro AUROC "
            f"(labels: {[LABELS[j] for j in columns]})",
            "best_epoch": best_epoch,
            "stopped": stopped,
            "history": history,
            "pretraining_overlap": pretraining_overlap(encoder.metadata, data),
        },
        encoder={**encoder_summary(encoder), "frozen": False},
    )
    return finish(out, config, outputs, started=started)


def _cache(
    encoder: Encoder, data: DownstreamData, config: DownstreamConfig
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The uint8 cache of train + valid; undecodable images are dropped from ``data``."""
    paths = data.paths("train") + data.paths("valid")
    count = len(data.rows["train"])
    cache = load_or_build_cache(
        paths,
        encoder.preprocessing.resize,
        Path(config.data.cache_dir).expanduser() / "images",
        workers=max(1, config.data.workers),
    )
    failed = set(cache.failed)
    data.drop("train", [i for i in failed if i < count])
    data.drop("valid", [i - count for i in failed if i >= count])
    usable = cache.usable
    return cache.images, {"train": usable[usable < count], "valid": usable[usable >= count]}


def train_classifier(
    encoder: Encoder,
    data: DownstreamData,
    images: np.ndarray,
    indices: dict[str, np.ndarray],
    columns: list[int],
    config: DownstreamConfig,
    device: torch.device,
) -> tuple[CXRClassifier, list[dict[str, float]], int, str]:
    """The fine-tuning loop; returns the model at its best validation epoch and the history."""
    settings = config.finetune
    torch.manual_seed(config.seed)
    model = encoder.model.to(device)
    model.head.reset_parameters()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.max_epochs)
    stopping = EarlyStopping(patience=settings.patience, min_delta=settings.min_delta)
    train_set = CachedViews(
        images, indices["train"], encoder.preprocessing, augment=config.augment, seed=config.seed
    )
    targets = torch.from_numpy(data.labels["train"].targets)
    mask = torch.from_numpy(data.labels["train"].mask.astype(np.float32))
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] = (-np.inf, 0, {})
    stopped = "max_epochs"
    for epoch in range(settings.max_epochs):
        train_set.epoch = epoch
        loss = _train_epoch(model, optimizer, train_set, targets, mask, config, epoch, device)
        probabilities = predict_cached(model, images, indices["valid"], encoder, config, device)
        score = macro_auroc(probabilities, data.labels["valid"], columns)
        if score is None:
            raise ValueError("the validation macro AUROC is undefined")
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(loss, 6),
                "valid_macro_auroc": round(score, 6),
                "lr": optimizer.param_groups[0]["lr"],
            }
        )
        log.info("epoch %d: loss %.4f, valid macro AUROC %.4f", epoch + 1, loss, score)
        if score > best[0]:
            best = (score, epoch + 1, copy.deepcopy(model.state_dict()))
        scheduler.step()
        if stopping.update(-score, epoch):
            stopped = "early_stopping"
            break
    model.load_state_dict(best[2])
    return model, history, best[1], stopped


def _train_epoch(
    model: CXRClassifier,
    optimizer: torch.optim.Optimizer,
    dataset: CachedViews,
    targets: torch.Tensor,
    mask: torch.Tensor,
    config: DownstreamConfig,
    epoch: int,
    device: torch.device,
) -> float:
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0])
    )
    loader: DataLoader[Any] = DataLoader(
        dataset,
        batch_size=config.finetune.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=config.data.workers,
    )
    steps = config.finetune.max_steps_per_epoch or len(loader)
    model.train()
    losses = []
    for views, items in itertools.islice(loader, steps):
        logits = _logits(model, views.to(device))
        loss = masked_bce(logits, targets[items].to(device), mask[items].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return float(np.mean(losses))


@torch.inference_mode()
def predict_cached(
    model: CXRClassifier,
    images: np.ndarray,
    indices: np.ndarray,
    encoder: Encoder,
    config: DownstreamConfig,
    device: torch.device,
) -> np.ndarray:
    """Probabilities from the cached plain views (validation during training)."""
    model.eval()
    loader: DataLoader[Any] = DataLoader(
        CachedViews(images, indices, encoder.preprocessing),
        batch_size=config.data.embed_batch_size,
        num_workers=config.data.workers,
    )
    out = [
        torch.sigmoid(model.forward_head(model.forward_features(views.to(device))[0])).cpu()
        for views, _ in loader
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), dtype=np.float32)


def _logits(model: CXRClassifier, views: torch.Tensor) -> torch.Tensor:
    return model.head(model.embed(views))


def _final_predictions(
    model: CXRClassifier,
    data: DownstreamData,
    images: np.ndarray,
    train_indices: np.ndarray,
    encoder: Encoder,
    config: DownstreamConfig,
    device: torch.device,
) -> dict[str, Predictions]:
    """Valid and test by the exact inference path; train (threshold fallback only) from the cache."""
    result = {}
    for split in ("valid", "test"):
        probabilities, embeddings, failed = predict_files(
            model,
            data.paths(split),
            encoder.preprocessing,
            batch_size=config.data.embed_batch_size,
            workers=config.data.workers,
            device=device,
        )
        keep = np.setdiff1d(np.arange(len(probabilities)), failed)
        data.drop(split, failed)
        result[split] = Predictions(
            [str(p) for p in data.paths(split)], data.labels[split], probabilities[keep], embeddings[keep]
        )
    train = predict_cached(model, images, train_indices, encoder, config, device)
    result["train"] = Predictions([str(p) for p in data.paths("train")], data.labels["train"], train, None)
    model.cpu()
    return result


def _summary_row(fraction: float, metrics: dict[str, Any]) -> dict[str, Any]:
    train = metrics["training_data"]["splits"]["train"]
    return {
        "fraction": fraction,
        "train_images": train["images"],
        "train_patients": train["patients"],
        "best_epoch": metrics.get("best_epoch"),
        "valid_macro_auroc": metrics["valid"]["macro"]["auroc"],
        "test_macro_auroc": metrics["test"]["macro"]["auroc"],
        "test_macro_auprc": metrics["test"]["macro"]["auprc"],
        "trained_labels": metrics["trained_labels"],
    }


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "not estimable"
    ci = entry.get("ci")
    return f"{entry['value']:.3f} ({ci[0]:.3f} to {ci[1]:.3f})" if ci else f"{entry['value']:.3f}"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| Labels used | Train images | Patients | Best epoch | Valid AUROC | Test AUROC (95 % CI) "
        "| Test AUPRC (95 % CI) | Trained labels |",
        "|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for row in rows:
        valid = row["valid_macro_auroc"]
        lines.append(
            f"| {100 * row['fraction']:g} % | {row['train_images']} | {row['train_patients']} | "
            f"{row['best_epoch']} | {valid['value']:.3f} | {_fmt(row['test_macro_auroc'])} | "
            f"{_fmt(row['test_macro_auprc'])} | {len(row['trained_labels'])} |"
            if valid
            else f"| {100 * row['fraction']:g} % | {row['train_images']} | not estimable |"
        )
    return "\n".join(lines) + "\n"
