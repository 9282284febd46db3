"""One MSN pretraining step, shared by the loop (training.pretrain) and the benchmark.

A step: masked anchor views (and EHR) through the anchor network, the unmasked target
view through the EMA target network without gradients, the MSN loss, AdamW (with the
scheduled learning rate and weight decay, optional clipping, optional float16 scaling),
then the EMA update of the target.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.config import PretrainConfig
from training.distributed import DistInfo
from training.msn.ema import ema_update_, momentum_at
from training.msn.masking import sample_keep_indices
from training.msn.model import MSNAnchor, MSNTarget, num_patches
from training.msn.msn_loss import anchor_log_probabilities, msn_loss
from training.schedule import cosine_lr, cosine_weight_decay

log = logging.getLogger(__name__)


@dataclass
class TrainParts:
    config: PretrainConfig
    anchor: MSNAnchor  # the module itself (``model`` may be its DDP wrapper)
    model: nn.Module
    target: MSNTarget
    optimizer: torch.optim.AdamW
    scaler: torch.amp.GradScaler | None
    device: torch.device
    amp_dtype: torch.dtype | None
    total_steps: int
    warmup_steps: int


def build_parts(
    config: PretrainConfig, *, ehr_dim: int, steps_per_epoch: int, dist_info: DistInfo
) -> TrainParts:
    """Networks, optimiser and scaler; call after seeding (weights are drawn from torch's RNG)."""
    anchor = MSNAnchor(
        config.model.arch,
        head_hidden=config.model.head_hidden,
        head_out=config.model.head_out,
        num_prototypes=config.loss.num_prototypes,
        ehr_dim=ehr_dim,
        ehr_embed_dim=config.ehr.embed_dim,
    )
    target = anchor.make_target()
    device = dist_info.device
    if dist_info.distributed and device.type == "cuda" and config.train.sync_batchnorm:
        anchor = nn.SyncBatchNorm.convert_sync_batchnorm(anchor)
        target = nn.SyncBatchNorm.convert_sync_batchnorm(target)
    anchor.to(device)
    target.to(device).train()
    model: nn.Module = anchor
    if dist_info.distributed:
        model = DistributedDataParallel(anchor, device_ids=[device.index] if device.type == "cuda" else None)
    _log_ignored_settings(config, dist_info)
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return TrainParts(
        config=config,
        anchor=anchor,
        model=model,
        target=target,
        optimizer=make_optimizer(anchor, config),
        scaler=scaler,
        device=device,
        amp_dtype=amp_dtype,
        total_steps=steps_per_epoch * config.train.epochs,
        warmup_steps=round(config.optim.warmup_epochs * steps_per_epoch),
    )


def _log_ignored_settings(config: PretrainConfig, dist_info: DistInfo) -> None:
    if dist_info.device.type != "cuda":
        if config.train.amp:
            log.info("train.amp: mixed precision is CUDA-only; this run computes in float32")
        if dist_info.distributed and config.train.sync_batchnorm:
            log.warning("train.sync_batchnorm: SyncBatchNorm needs CUDA; BatchNorm uses per-rank statistics")


def make_optimizer(anchor: MSNAnchor, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, normalisation weights and the prototypes (original MSN)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, parameter in anchor.named_parameters():
        exempt = parameter.ndim < 2 or name == "prototypes"
        (no_decay if exempt else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.optim.weight_decay, "scheduled_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "scheduled_wd": False},
    ]
    return torch.optim.AdamW(groups, lr=config.optim.lr, betas=config.optim.betas)


def _amp_dtype(config: PretrainConfig, device: torch.device) -> torch.dtype | None:
    if not config.train.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if config.train.amp_dtype == "bfloat16" else torch.float16


def anchor_inputs(
    batch: dict[str, torch.Tensor], parts: TrainParts
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """View-major anchor groups ([V * B, 3, S, S]) and their patch-keep indices (None: unmasked)."""
    mask = parts.config.mask
    groups: list[torch.Tensor] = []
    keeps: list[torch.Tensor | None] = []
    for name, masked in (("rand", True), ("focal", mask.mask_focal)):
        views = batch[name]
        if views.shape[1] == 0:
            continue
        group = views.transpose(0, 1).reshape(-1, *views.shape[2:]).to(parts.device, non_blocking=True)
        groups.append(group)
        keep = None
        if masked and mask.ratio > 0:
            patches = num_patches(parts.anchor.encoder, group.shape[-1])
            keep = sample_keep_indices(
                group.shape[0], patches, mask.ratio, per_sample=mask.per_sample, device=parts.device
            )
        keeps.append(keep)
    return groups, keeps


def set_schedules(parts: TrainParts, step: int) -> tuple[float, float]:
    optim = parts.config.optim
    lr = cosine_lr(
        step, parts.total_steps, base_lr=optim.lr, min_lr=optim.min_lr, warmup_steps=parts.warmup_steps
    )
    wd = cosine_weight_decay(step, parts.total_steps, start=optim.weight_decay, end=optim.final_weight_decay)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
        if group["scheduled_wd"]:
            group["weight_decay"] = wd
    return lr, wd


def train_step(parts: TrainParts, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
    """One optimiser step at global step ``step``; returns the step's scalars."""
    config = parts.config
    lr, wd = set_schedules(parts, step)
    groups, keeps = anchor_inputs(batch, parts)
    ehr = batch["ehr"].to(parts.device, non_blocking=True) if parts.anchor.fusion is not None else None
    targets_in = batch["target"].to(parts.device, non_blocking=True)
    with _autocast(parts):
        anchors, prototypes = parts.model(groups, keeps, ehr)
        with torch.no_grad():
            targets = parts.target(targets_in)
    out = msn_loss(
        anchors.float(),
        targets.float(),
        prototypes.float(),
        tau=config.loss.tau,
        sharpen=config.loss.sharpen,
        sinkhorn_iters=config.loss.sinkhorn_iters,
        me_max_weight=config.loss.me_max_weight,
    )
    loss_value = float(out.loss.detach())
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"the loss is {loss_value} at step {step}")
    _optimise(parts, out.loss)
    momentum = momentum_at(step, parts.total_steps, config.ema)
    ema_update_(parts.target, parts.anchor, momentum)
    return {
        "loss": loss_value,
        "cross_entropy": float(out.cross_entropy.detach()),
        "mean_entropy": float(out.mean_entropy.detach()),
        "lr": lr,
        "weight_decay": wd,
        "momentum": momentum,
        "target_max": float(out.targets.max(dim=1).values.mean()),
        "distinct_targets": float(out.targets.argmax(dim=1).unique().numel()),
        "agreement": argmax_agreement(
            anchors.detach().float(), out.targets, prototypes.detach().float(), config
        ),
    }


def argmax_agreement(
    anchors: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor, config: PretrainConfig
) -> float:
    """Share of anchor views whose most likely prototype is their target's (view-major rows)."""
    anchor_choice = anchor_log_probabilities(anchors, prototypes, config.loss.tau).argmax(dim=1)
    return float((anchor_choice == targets.argmax(dim=1)).float().mean())


def _optimise(parts: TrainParts, loss: torch.Tensor) -> None:
    parts.optimizer.zero_grad(set_to_none=True)
    clip = parts.config.optim.clip_grad
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        if clip > 0:
            parts.scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_(parts.anchor.parameters(), clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        return
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(parts.anchor.parameters(), clip)
    parts.optimizer.step()


def _autocast(parts: TrainParts) -> contextlib.AbstractContextManager[object]:
    if parts.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=parts.device.type, dtype=parts.amp_dtype)
