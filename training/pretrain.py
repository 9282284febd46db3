"""The MSN pretraining loop: epochs, logs, checkpoints, resume, early stopping, DDP.

Run folder (``out``)::

    config.json                   the resolved config
    version.json                  git describe/commit, package versions, world size, device
    manifest.csv                  only when built here (data.source=shared)
    ehr/                          the fitted imputer and the encoding (with EHR features)
    metrics.csv                   one row per epoch
    monitor.csv                   the learning monitor: probe AUROC and collapse signals (training.monitor)
    steps.csv                     one row every train.log_every steps
    tensorboard/                  the same scalars for TensorBoard
    train.log                     the log of rank 0
    checkpoints/state.pt          everything needed to resume, written atomically every epoch
    checkpoints/encoder.safetensors   the last epoch's encoder in the core format (kind "encoder")
    checkpoints/encoder_best_loss.safetensors   the encoder of the epoch with the lowest training
                                  loss (the paper keeps this one under early stopping)
    summary.json                  written at the end: losses, throughput, memory, rank digests

The encoder kept is the EMA target encoder for MSN, the EMA teacher's for DINO and the trained
encoder for MAE (``config.method``; training.baselines). Each encoder file records its epoch
(``metrics.epoch``) and which choice it is (``extra.selection``: ``last`` or ``best_loss``).
``best_loss`` is the early-stopping criterion's best epoch (an improvement is a drop of more
than ``train.min_delta``), tracked whether or not early stopping is on.

Seeding: torch's generator is seeded with ``train.seed`` before the networks are built,
and with (seed, epoch, rank) at the start of every epoch, so a resumed run repeats the
interrupted epoch exactly as an uninterrupted run would have run it (persistent loader
workers are reseeded per epoch to keep this: ``training.pretrain_data.EpochSeededSampler``).

Host/device synchronisation: the step's statistics stay on the device (``run_step``,
``EpochSums``) and are read only at the logged steps (``train.log_every`` and each epoch's
last) and once for the epoch's means; a non-finite loss raises ``FloatingPointError`` at the
next read, naming its step, before the epoch is recorded or checkpointed (docs/gpu.md).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
from cxrmsn.fileio import atomic_write_bytes
from cxrmsn.preprocess import PreprocessConfig
from training.config import PretrainConfig, from_dict, to_dict
from training.data.manifest import read_manifest
from training.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_buffers,
    init_distributed,
)
from training.early_stopping import EarlyStopping
from training.ehr import resolve_features
from training.monitor import (
    MONITOR_COLUMNS,
    ProbeSet,
    assess,
    embed,
    embedding_spread,
    load_probe_set,
    measure,
    probe_auroc,
)
from training.pretrain_data import (
    PretrainData,
    loader_settings,
    prepare_data,
    resolve_workers,
    seeded_for_persistent_workers,
)
from training.run_folder import ENCODER_FILES, CsvLog, code_version, peak_memory_mb, write_json
from training.train_step import KEPT_WEIGHTS, EpochSums, StepStats, TrainParts, build_parts, run_step

log = logging.getLogger(__name__)

#: The per-step scalars each method reports (averaged per epoch); the others' columns stay blank.
#: DINO's read like MSN's with the teacher as the target: its cross-entropy is its loss.
METHOD_STATS = {
    "msn": ("loss", "cross_entropy", "mean_entropy", "target_max", "agreement"),
    "dino": ("loss", "cross_entropy", "mean_entropy", "target_max", "agreement"),
    "mae": ("loss",),
}
EPOCH_COLUMNS = (
    "epoch",
    "loss",
    "cross_entropy",
    "mean_entropy",
    "target_max",
    "agreement",
    "lr",
    "momentum",
    "steps",
    "images",
    "seconds",
    "images_per_s",
    "peak_rss_mb",
    "peak_cuda_mb",
    "best_loss",
    "bad_epochs",
)
STEP_COLUMNS = (
    "epoch",
    "step",
    "loss",
    "cross_entropy",
    "mean_entropy",
    "lr",
    "weight_decay",
    "momentum",
    "target_max",
    "distinct_targets",
    "agreement",
)


@dataclass
class RunState:
    """What survives between epochs (and a kill): saved in checkpoints/state.pt."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    stopping: EarlyStopping = field(default_factory=EarlyStopping)
    finished: str = ""  # why training ended ("epochs", "early_stopping"), empty while running
    monitor: list[dict[str, Any]] = field(default_factory=list)  # the learning monitor's records


def pretrain(config: PretrainConfig, out: Path) -> dict[str, Any]:
    """Pretrain into a new run folder ``out``; returns the summary also written to summary.json."""
    if (out / "config.json").is_file():
        raise ValueError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    return _run(config, out, new=True)


def resume(out: Path) -> dict[str, Any]:
    """Continue the run in ``out`` from its last checkpoint, with its own config.json."""
    config_file = out / "config.json"
    if not config_file.is_file():
        raise ValueError(f"cannot resume: {config_file} does not exist")
    return _run(from_dict(json.loads(config_file.read_text())), out, new=False)


def _run(config: PretrainConfig, out: Path, *, new: bool) -> dict[str, Any]:
    dist_info = init_distributed(config.train.device)
    if new:
        _create_run_folder(config, out, dist_info)
    handler = _setup_logging(out, dist_info)
    try:
        return _pretrain(config, out, dist_info)
    finally:
        if handler is not None:
            logging.getLogger("training").removeHandler(handler)
            handler.close()


def _pretrain(config: PretrainConfig, out: Path, dist_info: DistInfo) -> dict[str, Any]:
    torch.manual_seed(config.train.seed)
    data = prepare_data(config, out, dist_info)
    loader, sampler = make_loader(data, config, dist_info)
    steps_per_epoch = _steps_per_epoch(loader, config)
    parts = build_parts(
        config, ehr_dim=data.dataset.ehr_dim, steps_per_epoch=steps_per_epoch, dist_info=dist_info
    )
    state = RunState(stopping=EarlyStopping(config.train.patience, config.train.min_delta))
    if (out / "checkpoints" / "state.pt").is_file():
        state = load_state(out / "checkpoints" / "state.pt", parts)
        log.info("resuming after epoch %d", state.epoch)
    logs = _open_logs(out, state, dist_info, steps_per_epoch)
    probe = _probe_set(config, data, dist_info)
    if probe is not None and not state.monitor:
        monitor_epoch(parts, probe, state, logs, steps_per_epoch)
    log.info(
        "pretraining %s (%s) on %d images (%s), %d steps per epoch, world size %d, device %s",
        config.name,
        config.method,
        len(data.rows),
        data.summary["datasets"],
        steps_per_epoch,
        dist_info.world_size,
        dist_info.device,
    )
    while not state.finished:
        stop = run_epoch(parts, loader, sampler, state, logs, dist_info, steps_per_epoch)
        if state.epoch >= config.train.epochs or stop:
            state.finished = "early_stopping" if stop and state.epoch < config.train.epochs else "epochs"
        if probe is not None and (state.epoch % config.monitor.every == 0 or state.finished):
            monitor_epoch(parts, probe, state, logs, steps_per_epoch)
        save_epoch(out, parts, state, data, dist_info)
    return _finish(out, parts, state, data, dist_info, logs)


def _probe_set(config: PretrainConfig, data: PretrainData, dist_info: DistInfo) -> ProbeSet | None:
    """The monitor's labelled images (rank 0 only), or None when it is off or has no labels."""
    if not dist_info.is_main or config.monitor.every == 0:
        return None
    probe = load_probe_set(
        data.manifest,
        read_manifest(data.manifest),
        config.monitor,
        size=config.views.target_size,
        cache_dir=Path(config.data.cache_dir).expanduser(),
        seed=config.train.seed,
    )
    if probe is None:
        log.warning("learning monitor off: the manifest has no labels estimable on both train and valid")
    else:
        log.info(
            "learning monitor: %s probe on %d train / %d valid labelled images, %d labels",
            config.monitor.probe,
            len(probe.train_images),
            len(probe.valid_images),
            len(probe.usable_labels),
        )
    return probe


def monitor_epoch(
    parts: TrainParts, probe: ProbeSet, state: RunState, logs: dict[str, Any], steps_per_epoch: int
) -> None:
    """Measure the target network after ``state.epoch`` epochs; log, record and warn (rank 0)."""
    config = parts.config
    started = time.perf_counter()
    record: dict[str, Any] = {"epoch": state.epoch}
    record.update(_measure(parts, probe))
    last = state.history[-1] if state.history and state.epoch else {}
    record["target_max"] = last.get("target_max", "")
    record["agreement"] = last.get("agreement", "")
    prototypes = _num_prototypes(config)
    record["mean_entropy_ratio"] = (
        last["mean_entropy"] / math.log(prototypes) if "mean_entropy" in last and prototypes > 1 else ""
    )
    # The prototype count is no collapse signal with EHR fusion (see assess) or without prototypes (MAE).
    prototype_signal = parts.anchor.fusion is None and config.method != "mae"
    record["status"] = assess(
        [*state.monitor, record], config.monitor, max(prototypes, 1), multimodal=not prototype_signal
    )
    state.monitor.append(record)
    logs["monitor"].append(record)
    step = max(0, state.epoch * steps_per_epoch - 1)
    for name in ("probe_auroc", "embedding_std", "prototypes_used"):
        if isinstance(record[name], int | float):
            logs["tensorboard"].add_scalar(f"monitor/{name}", record[name], step)
    logs["tensorboard"].flush()
    log.info(
        "monitor after epoch %d: probe AUROC %.3f (%d labels), embedding spread %.3f, "
        "%s prototypes in use (%.1f s)",
        state.epoch,
        record["probe_auroc"],
        record["probe_labels"],
        record["embedding_std"],
        record["prototypes_used"] if record["prototypes_used"] != "" else "no",
        time.perf_counter() - started,
    )
    if record["status"] != "ok":
        log.warning("monitor after epoch %d: %s", state.epoch, record["status"])


def _num_prototypes(config: PretrainConfig) -> int:
    return {"msn": config.loss.num_prototypes, "dino": config.dino.num_prototypes, "mae": 0}[config.method]


def _measure(parts: TrainParts, probe: ProbeSet) -> dict[str, Any]:
    """The monitor's measurements of the network the checkpoint keeps (rank 0)."""
    config = parts.config
    if parts.target is None:  # MAE: the probe and the spread only; there are no prototypes
        encoder = parts.encoder_to_keep()
        train = embed(encoder, probe.train_images, parts.device)
        valid = embed(encoder, probe.valid_images, parts.device)
        auroc, count = probe_auroc(train.numpy(), valid.numpy(), probe, config.monitor, config.train.seed)
        return {
            "probe_auroc": auroc,
            "probe_labels": count,
            "embedding_std": embedding_spread(valid),
            "prototypes_used": "",
        }
    prototypes = getattr(parts.target, "prototypes", None)  # DINO's teacher has its own (EMA)
    if prototypes is None:
        prototypes = parts.msn_anchor.prototypes
    return measure(
        parts.target, prototypes, probe, config.monitor, device=parts.device, seed=config.train.seed
    )


def make_loader(
    data: PretrainData, config: PretrainConfig, dist_info: DistInfo
) -> tuple[DataLoader[dict[str, torch.Tensor]], DistributedSampler[int]]:
    """Shuffled, seeded per epoch, split over the ranks; incomplete batches are dropped.
    ``data.num_workers`` processes (unset: ``default_workers()``), persistent across epochs,
    with ``loader_settings``' prefetching and (CUDA) pinned batches."""
    per_rank, remainder = divmod(config.train.batch_size, dist_info.world_size)
    if remainder or per_rank < 2:
        raise ValueError(
            f"train.batch_size {config.train.batch_size} must split evenly into >= 2 images per rank "
            f"over {dist_info.world_size} ranks (BatchNorm needs 2)"
        )
    if len(data.dataset) < config.train.batch_size:
        raise ValueError(f"{len(data.dataset)} images are fewer than one batch of {config.train.batch_size}")
    sampler: DistributedSampler[int] = DistributedSampler(
        data.dataset,
        num_replicas=dist_info.world_size,
        rank=dist_info.rank,
        shuffle=True,
        seed=config.train.seed,
        drop_last=True,
    )
    workers = resolve_workers(config.data.num_workers)
    settings = loader_settings(workers, dist_info)
    # Persistent workers keep their generators across epochs: reseeded per epoch instead, so
    # the views (and torch's generator in this process) are those of a loader without them.
    dataset, epoch_sampler = seeded_for_persistent_workers(data.dataset, sampler, workers)
    if workers:  # its own draws (the first iterator's base seed) leave torch's generator alone
        settings["generator"] = torch.Generator()
    loader = DataLoader(dataset, batch_size=per_rank, sampler=epoch_sampler, drop_last=True, **settings)
    log.info(
        "data loader: %d worker process(es)%s%s",
        workers,
        " (data.num_workers unset: this rank's cores less one)" if config.data.num_workers is None else "",
        ", pinned batches" if settings["pin_memory"] else "",
    )
    return loader, sampler


def _steps_per_epoch(loader: DataLoader[dict[str, torch.Tensor]], config: PretrainConfig) -> int:
    steps = len(loader)
    if config.train.max_steps_per_epoch:
        steps = min(steps, config.train.max_steps_per_epoch)
    return steps


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def run_epoch(
    parts: TrainParts,
    loader: DataLoader[dict[str, torch.Tensor]],
    sampler: DistributedSampler[int],
    state: RunState,
    logs: dict[str, Any],
    dist_info: DistInfo,
    steps_per_epoch: int,
) -> bool:
    """Train one epoch; records it in ``state``; True when early stopping says stop."""
    config, epoch = parts.config, state.epoch
    torch.manual_seed(epoch_seed(config.train.seed, epoch, dist_info.rank))
    sampler.set_epoch(epoch)
    parts.model.train()
    if dist_info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dist_info.device)
    names = METHOD_STATS[config.method]
    sums = EpochSums(names, dist_info.device)
    last: StepStats | None = None
    started = time.perf_counter()
    for index, batch in enumerate(_progress(loader, steps_per_epoch, epoch, dist_info, config)):
        step = epoch * steps_per_epoch + index
        last = run_step(parts, batch, step)  # statistics stay on the device: no waiting here
        sums.add(last)
        if step % config.train.log_every == 0 or index == steps_per_epoch - 1:
            stats = sums.read(last)  # every rank: the finiteness check is a collective
            if dist_info.is_main:
                _log_step(logs, epoch, step, stats)
    means = sums.means()  # the epoch's one read of the sums (and the finiteness of every step)
    seconds = time.perf_counter() - started
    loss = means["loss"]
    patience_exhausted = state.stopping.update(loss, epoch)
    images = sums.steps * config.train.batch_size
    values = last.values if last is not None else {}
    record = {
        "epoch": epoch + 1,
        **means,
        "lr": float(values.get("lr", 0.0)),
        "momentum": float(values["momentum"]) if "momentum" in values else "",
        "steps": steps_per_epoch,
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 2),
        "peak_cuda_mb": _peak_cuda_mb(dist_info),
        "best_loss": state.stopping.best,
        "bad_epochs": state.stopping.bad_epochs,
        "peak_rss_mb": peak_memory_mb()["peak_rss_mb"],
    }
    state.history.append(record)
    state.epoch += 1
    if dist_info.is_main:
        logs["epochs"].append(record)
        last_step = (epoch + 1) * steps_per_epoch - 1
        for name in (*names, "images_per_s"):
            logs["tensorboard"].add_scalar(f"epoch/{name}", record[name], last_step)
        logs["tensorboard"].flush()
        log.info("epoch %d: loss %.5f (%.1f images/s)", epoch + 1, loss, record["images_per_s"])
    return config.train.early_stopping and patience_exhausted


def _progress(
    loader: DataLoader[dict[str, torch.Tensor]],
    steps: int,
    epoch: int,
    dist_info: DistInfo,
    config: PretrainConfig,
) -> Any:
    batches = itertools.islice(loader, steps)
    if not (config.train.progress and dist_info.is_main):
        return batches
    from tqdm import tqdm

    return tqdm(
        batches, total=steps, desc=f"epoch {epoch + 1}/{config.train.epochs}", leave=False, mininterval=2.0
    )


def _log_step(logs: dict[str, Any], epoch: int, step: int, stats: dict[str, float]) -> None:
    logs["steps"].append({"epoch": epoch + 1, "step": step, **stats})
    for name, value in stats.items():
        logs["tensorboard"].add_scalar(f"step/{name}", value, step)


def _peak_cuda_mb(dist_info: DistInfo) -> float:
    if dist_info.device.type != "cuda":
        return 0.0
    return round(torch.cuda.max_memory_allocated(dist_info.device) / 2**20, 1)


def save_epoch(
    out: Path, parts: TrainParts, state: RunState, data: PretrainData, dist_info: DistInfo
) -> None:
    """Make buffers identical on every rank, then (rank 0) write the encoders and the state.

    The best-loss encoder is written before state.pt: a run killed in between repeats the
    epoch on resuming (exactly) and writes it again, so it never lags behind the state.
    """
    for module in parts.modules().values():
        broadcast_buffers(module)
    if dist_info.is_main:
        folder = out / "checkpoints"
        if state.stopping.best_epoch == state.epoch - 1:  # this epoch is the best so far
            save_encoder(folder / ENCODER_FILES["best_loss"], parts, state, data, selection="best_loss")
        save_encoder(folder / ENCODER_FILES["last"], parts, state, data)
        if parts.config.train.keep_epoch_encoders:
            save_encoder(folder / f"encoder_epoch{state.epoch:03d}.safetensors", parts, state, data)
        save_state(folder / "state.pt", parts, state)
    barrier()


def save_state(path: Path, parts: TrainParts, state: RunState) -> None:
    payload = {
        "epoch": state.epoch,
        "history": state.history,
        "stopping": state.stopping.state_dict(),
        "finished": state.finished,
        "monitor": state.monitor,
        **{name: module.state_dict() for name, module in parts.modules().items()},
        "optimizer": parts.optimizer.state_dict(),
        "scaler": None if parts.scaler is None else parts.scaler.state_dict(),
        "config": to_dict(parts.config),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path, parts: TrainParts) -> RunState:
    payload = torch.load(path, map_location=parts.device, weights_only=True)
    if from_dict(payload["config"]) != parts.config:
        raise ValueError(f"{path} was written with another config than the run folder's config.json")
    for name, module in parts.modules().items():
        module.load_state_dict(payload[name], strict=True)
    parts.optimizer.load_state_dict(payload["optimizer"])
    if parts.scaler is not None and payload["scaler"] is not None:
        parts.scaler.load_state_dict(payload["scaler"])
    return RunState(
        epoch=int(payload["epoch"]),
        history=list(payload["history"]),
        stopping=EarlyStopping.from_state(payload["stopping"]),
        finished=str(payload["finished"]),
        monitor=list(payload.get("monitor", [])),
    )


def save_encoder(
    path: Path, parts: TrainParts, state: RunState, data: PretrainData, *, selection: str = "last"
) -> None:
    """The kept encoder (``TrainParts.encoder_to_keep``) in the core checkpoint format, loadable
    into create_encoder(arch); ``selection`` says which epoch it is: ``last`` or ``best_loss``."""
    config = parts.config
    size = config.views.target_size
    last = state.history[-1] if state.history else {}
    method = config.method
    features = list(resolve_features(config.ehr.features))
    images = f"on {data.summary['images']} images of {', '.join(data.summary['datasets'])}"
    summary = {
        "msn": f"MSN pretraining (self-supervised, no labels) {images}; EHR features: "
        f"{', '.join(features) or 'none (vanilla MSN)'}",
        "dino": f"DINO pretraining (self-supervised, no labels; an image-only baseline) {images}",
        "mae": f"MAE pretraining (self-supervised, no labels; an image-only baseline) {images}",
    }[method]
    metadata = CheckpointMetadata(
        architecture=config.model.arch,
        kind="encoder",
        preprocessing=PreprocessConfig(resize=size, crop=size).to_dict(),
        training_data={
            "summary": summary,
            **data.summary,
        },
        metrics={
            "epoch": state.epoch,  # the epoch whose weights these are (1-based)
            "epochs": state.epoch,  # epochs trained when the file was written
            "loss": last.get("loss"),
            "best_loss": state.stopping.best,
            "best_loss_epoch": state.stopping.best_epoch + 1,
            **_monitor_metrics(state),
        },
        extra={
            "method": method,
            "weights": KEPT_WEIGHTS[method],
            "selection": selection,
            "config_name": config.name,
            "ehr_features": features,
            "finished": state.finished,
            "code_version": code_version()["git_describe"],
        },
    )
    save_checkpoint(path, parts.encoder_to_keep().state_dict(), metadata)


def _monitor_metrics(state: RunState) -> dict[str, Any]:
    if not state.monitor:
        return {}
    first, latest = state.monitor[0], state.monitor[-1]
    return {
        "monitor_probe_auroc": latest["probe_auroc"],
        "monitor_probe_auroc_at_init": first["probe_auroc"] if first["epoch"] == 0 else None,
        "monitor_status": latest["status"],
    }


def state_digest(parts: TrainParts) -> str:
    """sha256 over every tensor of the trained and EMA networks (same on every DDP rank)."""
    digest = hashlib.sha256()
    for module in parts.modules().values():
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _finish(
    out: Path,
    parts: TrainParts,
    state: RunState,
    data: PretrainData,
    dist_info: DistInfo,
    logs: dict[str, Any],
) -> dict[str, Any]:
    digests = all_gather_objects(state_digest(parts))
    summary = {
        "config": parts.config.name,
        "epochs": state.epoch,
        "finished": state.finished,
        "best_loss": state.stopping.best,
        "best_epoch": state.stopping.best_epoch + 1,
        "final_loss": state.history[-1]["loss"] if state.history else None,
        "images_per_s": [h["images_per_s"] for h in state.history],
        "world_size": dist_info.world_size,
        "device": str(dist_info.device),
        "rank_state_sha256": digests,
        "ranks_identical": len(set(digests)) == 1,
        "data": data.summary,
        "method": parts.config.method,
        "encoder": str(out / "checkpoints" / ENCODER_FILES["last"]),
        "encoder_epoch": state.epoch,
        "encoder_best_loss": str(out / "checkpoints" / ENCODER_FILES["best_loss"]),
        "encoder_best_loss_epoch": state.stopping.best_epoch + 1,
        "monitor": state.monitor,
        "monitor_status": state.monitor[-1]["status"] if state.monitor else "off",
        **peak_memory_mb(),
    }
    if dist_info.is_main:
        write_json(out / "summary.json", summary)
        logs["tensorboard"].close()
        log.info(
            "finished (%s) after %d epochs; encoder: %s (last epoch), %s (best loss, epoch %d)",
            state.finished,
            state.epoch,
            summary["encoder"],
            summary["encoder_best_loss"],
            summary["encoder_best_loss_epoch"],
        )
    barrier()
    return summary


def _create_run_folder(config: PretrainConfig, out: Path, dist_info: DistInfo) -> None:
    barrier()  # every rank has seen the folder empty before rank 0 fills it
    if dist_info.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", to_dict(config))
        version = {**code_version(), "world_size": dist_info.world_size, "device": str(dist_info.device)}
        write_json(out / "version.json", version)
    barrier()


def _setup_logging(out: Path, dist_info: DistInfo) -> logging.Handler | None:
    """Rank 0 logs to train.log as well; the other ranks log warnings only."""
    if not dist_info.is_main:
        logging.getLogger("training").setLevel(logging.WARNING)
        return None
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("training").addHandler(handler)
    logging.getLogger("training").setLevel(logging.INFO)
    return handler


def _open_logs(out: Path, state: RunState, dist_info: DistInfo, steps_per_epoch: int) -> dict[str, Any]:
    """CSV and TensorBoard logs, cut back to the last checkpoint when resuming (rank 0 only)."""
    if not dist_info.is_main:
        return {}
    from torch.utils.tensorboard import SummaryWriter

    epochs = CsvLog(out / "metrics.csv", EPOCH_COLUMNS)
    steps = CsvLog(out / "steps.csv", STEP_COLUMNS)
    monitor = CsvLog(out / "monitor.csv", MONITOR_COLUMNS)
    for log_file in (epochs, steps):
        log_file.keep_rows(lambda row: int(row["epoch"]) <= state.epoch)
    measured = {int(record["epoch"]) for record in state.monitor}  # a kill before the first save
    monitor.keep_rows(lambda row: int(row["epoch"]) in measured)  # leaves an epoch-0 row unsaved
    writer = SummaryWriter(str(out / "tensorboard"), purge_step=state.epoch * steps_per_epoch or None)
    return {"epochs": epochs, "steps": steps, "monitor": monitor, "tensorboard": writer}
