"""Fine-tuning (the paper's secondary protocol): the whole classifier trained, encoder unfrozen,
on 1 %, 5 %, 10 % and 100 % of the training labels.

For each fraction the training split is cut down by whole patients (seeded, the same subset
for every encoder given the seed; ``training.downstream.data.patient_subset``); valid and test
are unchanged. Every run starts from the pretrained encoder and the same seeded head, with the
same batch order and augmentation; Adam over at most ``finetune.max_epochs`` (batch
``finetune.batch_size``), keeping each run's best validation epoch
(``training.downstream.selection``). Runs (``runs``):

- ``grid`` (default, the paper's): the linear-evaluation grid of the ``head`` section: lr
  1e-3, 5e-4, 1e-4 with cosine annealing and early stopping on the validation macro AUROC
  (``finetune.patience``, ``finetune.min_delta``), and lr 5e-4, 1e-4 with ReduceLROnPlateau
  (``head.plateau_factor``, ``head.plateau_patience``) and no early stopping; the run with the
  highest best-epoch validation macro AUROC is kept;
- ``single``: one cosine run at ``finetune.lr`` with early stopping (five times cheaper, for
  CPU budgets; what this command did before the grid).

Epochs read the uint8 image cache of ``training.data.cache`` (squares of the checkpoint's
``resize``): training views get the paper's augmentation (flip, random affine, centre crop),
validation during training the plain view from the cache (it differs from the inference view
only by 8-bit rounding of the resized image). The final valid and test predictions, the
thresholds and the metrics use the exact inference path (``training.downstream.predict``).

Folder: ``OUT/fraction_<f>/`` holds what linear evaluation writes (classifier.safetensors,
metrics.json with every run's history, predictions/); ``OUT/summary.json`` and
``OUT/summary.md`` tabulate the fractions.
"""

from __future__ import annotations

import copy
import itertools
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
from training.downstream.config import DownstreamConfig, config_to_dict, with_fraction
from training.downstream.data import (
    DownstreamData,
    data_summary,
    prepare_data,
    pretraining_overlap,
    resolve_manifest,
)
from training.downstream.embeddings import Encoder, cuda_precision, load_encoder
from training.downstream.estimates import format_estimate
from training.downstream.images import CachedViews
from training.downstream.linear import RunResult, RunSpec, masked_bce
from training.downstream.linear_eval import encoder_summary
from training.downstream.metrics import macro_auroc
from training.downstream.predict import class_logits, predict_cached, predict_files
from training.downstream.run_metrics import METRICS_FILE, RunMetrics
from training.downstream.selection import BestEpoch, best_run
from training.run_folder import write_json

log = logging.getLogger(__name__)

#: ``grid``: the paper's five runs (the head section's grid); ``single``: one cosine run at finetune.lr.
FINETUNE_RUNS = ("grid", "single")


def finetune_runs(config: DownstreamConfig, runs: str = "grid") -> list[RunSpec]:
    """The runs of one fraction (see the module docstring)."""
    if runs == "single":
        return [RunSpec(f"finetune_lr{config.finetune.lr:g}", config.finetune.lr, "cosine")]
    if runs != "grid":
        raise ValueError(f"runs must be one of {FINETUNE_RUNS}, got {runs!r}")
    head = config.head
    cosine = [RunSpec(f"cosine_lr{lr:g}", lr, "cosine") for lr in head.cosine_lrs]
    return cosine + [RunSpec(f"plateau_lr{lr:g}", lr, "plateau") for lr in head.plateau_lrs]


def finetune(
    encoder_path: Path, config: DownstreamConfig, out: Path, *, runs: str = "grid"
) -> dict[str, Any]:
    """Every fraction of ``finetune.fractions`` into ``out/fraction_<f>``; returns the summary."""
    finetune_runs(config, runs)  # validates ``runs`` before anything is written
    if (out / "summary.json").is_file():
        raise ValueError(f"{out} already holds results (summary.json): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config_to_dict(config))
    encoder = load_encoder(encoder_path, config.augment.eval_view)
    manifest = resolve_manifest(config, out, encoder.metadata)
    rows = []
    for fraction in config.finetune.fractions:
        folder = out / f"fraction_{fraction:g}"
        if (folder / METRICS_FILE).is_file():
            metrics = RunMetrics.read(folder)
            done = metrics.finetune_runs or "single"  # before the grid, runs were not recorded
            if done != runs:
                raise ValueError(
                    f"{folder} was fine-tuned with runs={done}, not {runs}: choose another --out"
                )
        else:
            metrics = finetune_fraction(
                encoder_path, with_fraction(config, fraction), manifest, folder, runs=runs
            )
        rows.append(_summary_row(fraction, metrics))
    summary = {"encoder": encoder_summary(encoder), "finetune_runs": runs, "fractions": rows}
    write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(rows))
    return summary


def finetune_fraction(
    encoder_path: Path, config: DownstreamConfig, manifest: Path, out: Path, *, runs: str = "grid"
) -> RunMetrics:
    started = time.perf_counter()
    specs = finetune_runs(config, runs)
    start_output(out, config)
    encoder = load_encoder(encoder_path, config.augment.eval_view)
    data = prepare_data(config, manifest)
    device = resolve_device(config.device)
    images, indices = _cache(encoder, data, config)
    trained = trained_labels(data.labels["train"])
    columns = selection_columns(trained, data.labels["valid"])
    if not columns:
        raise ValueError("no trained label has positives and negatives in valid: nothing to select on")
    log.info(
        "fine-tuning on %.0f %% of the training labels: %d images of %d patients, %d run(s)",
        100 * config.data.label_fraction,
        len(data.rows["train"]),
        len({(r.dataset, r.patient_id) for r in data.rows["train"]}),
        len(specs),
    )
    initial = copy.deepcopy(encoder.model.state_dict())  # the pretrained encoder, an untrained head
    results: list[RunResult] = []
    for spec in specs:
        encoder.model.load_state_dict(initial)
        result = train_classifier(encoder, data, images, indices, columns, config, device, spec)
        if results and result.best_valid_macro_auroc <= best_run(results).best_valid_macro_auroc:
            result.state = {}  # keep the weights of the best run so far only
        else:
            for earlier in results:
                earlier.state = {}
        results.append(result)
    best = best_run(results)
    model = encoder.model
    model.load_state_dict(best.state)
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
            "finetune_runs": runs,
            "selected_run": best.spec.name,
            "selection": "highest best-epoch validation macro AUROC over the runs "
            f"(labels: {[LABELS[j] for j in columns]})",
            "best_epoch": best.best_epoch,
            "stopped": best.stopped,
            "history": best.history,
            "runs": [result.summary() for result in results],
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
    spec: RunSpec,
) -> RunResult:
    """One run from ``encoder.model``'s current weights; its state is the best validation epoch's."""
    settings = config.finetune
    torch.manual_seed(config.seed)
    model = encoder.model.to(device)
    model.head.reset_parameters()  # the same seeded head for every run
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=settings.weight_decay)
    tracker = BestEpoch(
        optimizer,
        spec.schedule,
        max_epochs=settings.max_epochs,
        patience=settings.patience,
        min_delta=settings.min_delta,
        plateau_factor=config.head.plateau_factor,
        plateau_patience=config.head.plateau_patience,
    )
    train_set = CachedViews(
        images, indices["train"], encoder.preprocessing, augment=config.augment, seed=config.seed
    )
    targets = torch.from_numpy(data.labels["train"].targets)
    mask = torch.from_numpy(data.labels["train"].mask.astype(np.float32))
    for epoch in range(settings.max_epochs):
        train_set.epoch = epoch
        loss = _train_epoch(model, optimizer, train_set, targets, mask, config, epoch, device)
        probabilities = _predict_cached(model, images, indices["valid"], encoder, config, device)
        score = macro_auroc(probabilities, data.labels["valid"], columns)
        log.info("%s epoch %d: loss %.4f, valid macro AUROC %s", spec.name, epoch + 1, loss, score)
        if tracker.end_epoch(epoch, loss=loss, score=score, module=model):
            break
    return RunResult.from_tracker(spec, tracker)


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
        with cuda_precision(device):  # bf16 autocast on CUDA, float32 on the CPU
            logits, _ = class_logits(model, views.to(device))
        loss = masked_bce(logits.float(), targets[items].to(device), mask[items].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())  # read once per epoch, not once per step
    model.eval()
    return float(torch.stack(losses).mean()) if losses else float("nan")


def _predict_cached(
    model: CXRClassifier,
    images: np.ndarray,
    indices: np.ndarray,
    encoder: Encoder,
    config: DownstreamConfig,
    device: torch.device,
) -> np.ndarray:
    return predict_cached(
        model,
        images,
        indices,
        encoder.preprocessing,
        batch_size=config.data.embed_batch_size,
        workers=config.data.workers,
        device=device,
    )


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
    train = _predict_cached(model, images, train_indices, encoder, config, device)
    result["train"] = Predictions([str(p) for p in data.paths("train")], data.labels["train"], train, None)
    model.cpu()
    return result


def _summary_row(fraction: float, metrics: RunMetrics) -> dict[str, Any]:
    train = metrics.data_block()["splits"]["train"]
    return {
        "fraction": fraction,
        "train_images": train["images"],
        "train_patients": train["patients"],
        "selected_run": metrics.selected_run,
        "best_epoch": metrics.best_epoch,
        "valid_macro_auroc": metrics.macro("valid")["auroc"],
        "test_macro_auroc": metrics.macro("test")["auroc"],
        "test_macro_auprc": metrics.macro("test")["auprc"],
        "trained_labels": metrics.trained_labels,
    }


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| Labels used | Train images | Patients | Selected run | Best epoch | Valid AUROC "
        "| Test AUROC (95 % CI) | Test AUPRC (95 % CI) | Trained labels |",
        "|---:|---:|---:|---|---:|---:|---|---|---:|",
    ]
    for row in rows:
        valid = row["valid_macro_auroc"]
        lines.append(
            f"| {100 * row['fraction']:g} % | {row['train_images']} | {row['train_patients']} | "
            f"{row.get('selected_run') or '-'} | "
            f"{row['best_epoch']} | {valid['value']:.3f} | {format_estimate(row['test_macro_auroc'])} | "
            f"{format_estimate(row['test_macro_auprc'])} | {len(row['trained_labels'])} |"
            if valid
            else f"| {100 * row['fraction']:g} % | {row['train_images']} | not estimable |"
        )
    return "\n".join(lines) + "\n"
