"""One pretraining step, shared by the loop (training.pretrain) and the benchmark.

An MSN step: masked anchor views (and EHR) through the anchor network, the unmasked target
view through the EMA target network without gradients, the MSN loss, AdamW (with the
scheduled learning rate and weight decay, optional clipping, optional float16 scaling),
then the EMA update of the target.

The baselines (``config.method``, ``training.baselines``) share everything but the networks
and the loss: DINO (student = ``anchor``, EMA teacher = ``target``, all views, no masking)
and MAE (``anchor`` = encoder + decoder on the masked target view, no EMA network).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.baselines.dino import DINOStudent, DINOTeacher, dino_forward
from training.baselines.dino_loss import teacher_temperature
from training.baselines.mae import MAEModel, mae_forward
from training.config import PretrainConfig
from training.distributed import DistInfo
from training.msn.ema import ema_update_, momentum_at
from training.msn.masking import sample_keep_indices
from training.msn.model import MSNAnchor, MSNTarget, num_patches
from training.msn.msn_loss import anchor_log_probabilities, msn_loss
from training.schedule import cosine_lr, cosine_weight_decay

log = logging.getLogger(__name__)


TrainedNetwork = MSNAnchor | DINOStudent | MAEModel
EMANetwork = MSNTarget | DINOTeacher


@dataclass
class TrainParts:
    config: PretrainConfig
    anchor: TrainedNetwork  # the trained module itself (``model`` may be its DDP wrapper)
    model: nn.Module
    target: EMANetwork | None  # the EMA network (MSN's target, DINO's teacher); None for MAE
    optimizer: torch.optim.AdamW
    scaler: torch.amp.GradScaler | None
    device: torch.device
    amp_dtype: torch.dtype | None
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int = 1

    @property
    def msn_anchor(self) -> MSNAnchor:
        if not isinstance(self.anchor, MSNAnchor):
            raise TypeError(f"method={self.config.method} has no MSN anchor network")
        return self.anchor

    def encoder_to_keep(self) -> nn.Module:
        """The encoder the checkpoint holds: the EMA target (MSN), the EMA teacher (DINO) or
        the trained encoder itself (MAE, which has no EMA network)."""
        network = self.anchor if self.target is None else self.target
        return network.encoder

    def modules(self) -> dict[str, nn.Module]:
        """The networks whose state is saved and resumed (and compared across ranks)."""
        return {"anchor": self.anchor} | ({} if self.target is None else {"target": self.target})


KEPT_WEIGHTS = {
    "msn": "EMA target encoder",
    "dino": "EMA teacher encoder",
    "mae": "encoder (MAE keeps no EMA network)",
}


def build_network(config: PretrainConfig, *, ehr_dim: int) -> tuple[TrainedNetwork, EMANetwork | None]:
    """The trained network of ``config.method`` and its EMA copy (None for MAE)."""
    if config.method == "dino":
        student = DINOStudent(
            config.model.arch,
            head_hidden=config.dino.head_hidden,
            bottleneck=config.dino.bottleneck,
            num_prototypes=config.dino.num_prototypes,
        )
        return student, student.make_target()
    if config.method == "mae":
        mae = config.mae
        model = MAEModel(
            config.model.arch,
            decoder_dim=mae.decoder_dim,
            decoder_depth=mae.decoder_depth,
            decoder_heads=mae.decoder_heads,
            mask_ratio=mae.mask_ratio,
        )
        return model, None
    anchor = MSNAnchor(
        config.model.arch,
        head_hidden=config.model.head_hidden,
        head_out=config.model.head_out,
        num_prototypes=config.loss.num_prototypes,
        ehr_dim=ehr_dim,
        ehr_embed_dim=config.ehr.embed_dim,
    )
    return anchor, anchor.make_target()


def build_parts(
    config: PretrainConfig, *, ehr_dim: int, steps_per_epoch: int, dist_info: DistInfo
) -> TrainParts:
    """Networks, optimiser and scaler; call after seeding (weights are drawn from torch's RNG)."""
    if config.method != "msn" and ehr_dim:
        raise ValueError(f"method={config.method} takes no EHR features, got {ehr_dim}")
    anchor, target = build_network(config, ehr_dim=ehr_dim)
    device = dist_info.device
    if dist_info.distributed and device.type == "cuda" and config.train.sync_batchnorm:
        anchor = nn.SyncBatchNorm.convert_sync_batchnorm(anchor)
        if target is not None:
            target = nn.SyncBatchNorm.convert_sync_batchnorm(target)
    anchor.to(device)
    if target is not None:
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
        steps_per_epoch=steps_per_epoch,
    )


def _log_ignored_settings(config: PretrainConfig, dist_info: DistInfo) -> None:
    if config.method != "msn":
        log.info(
            "method=%s: the mask and loss sections are MSN's and unused; the %s section applies",
            config.method,
            config.method,
        )
    if dist_info.device.type != "cuda":
        if config.train.amp:
            log.info("train.amp: mixed precision is CUDA-only; this run computes in float32")
        if dist_info.distributed and config.train.sync_batchnorm:
            log.warning("train.sync_batchnorm: SyncBatchNorm needs CUDA; BatchNorm uses per-rank statistics")


def make_optimizer(anchor: nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and normalisation weights, nor on MSN's prototypes
    (original MSN). DINO decays its last layer and MAE everything of two or more dimensions,
    as their reference code does."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, parameter in anchor.named_parameters():
        exempt = parameter.ndim < 2 or (name == "prototypes" and config.method == "msn")
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
    encoder = parts.msn_anchor.encoder
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
            patches = num_patches(encoder, group.shape[-1])
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
    epoch = step // parts.steps_per_epoch
    with _autocast(parts):
        loss, stats = _forward(parts, batch, epoch)
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"the loss is {loss_value} at step {step}")
    frozen: list[nn.Parameter] = []
    if isinstance(parts.anchor, DINOStudent) and epoch < config.dino.freeze_last_layer_epochs:
        frozen.append(parts.anchor.prototypes)  # DINO's freeze_last_layer
    _optimise(parts, loss, frozen)
    result = {"loss": loss_value, "lr": lr, "weight_decay": wd}
    if parts.target is not None:
        momentum = momentum_at(step, parts.total_steps, config.ema)
        ema_update_(parts.target, parts.anchor, momentum)
        result["momentum"] = momentum
    return result | stats


def _forward(
    parts: TrainParts, batch: dict[str, torch.Tensor], epoch: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The method's loss (differentiable) and its scalars, inside autocast."""
    config = parts.config
    if isinstance(parts.anchor, MAEModel):
        return mae_forward(
            parts.model, parts.anchor, batch, norm_pix_loss=config.mae.norm_pix_loss, device=parts.device
        )
    if isinstance(parts.anchor, DINOStudent) and isinstance(parts.target, DINOTeacher):
        dino = config.dino
        return dino_forward(
            parts.model,
            parts.anchor,
            parts.target,
            batch,
            student_temp=dino.student_temp,
            teacher_temp=teacher_temperature(
                epoch,
                start=dino.warmup_teacher_temp,
                end=dino.teacher_temp,
                warmup_epochs=dino.warmup_teacher_temp_epochs,
            ),
            center_momentum=dino.center_momentum,
            device=parts.device,
        )
    return _msn_forward(parts, batch)


def _msn_forward(parts: TrainParts, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    config = parts.config
    anchor = parts.msn_anchor
    if not isinstance(parts.target, MSNTarget):
        raise TypeError("an MSN step needs the MSN target network")
    groups, keeps = anchor_inputs(batch, parts)
    ehr = batch["ehr"].to(parts.device, non_blocking=True) if anchor.fusion is not None else None
    targets_in = batch["target"].to(parts.device, non_blocking=True)
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
    stats = {
        "cross_entropy": float(out.cross_entropy.detach()),
        "mean_entropy": float(out.mean_entropy.detach()),
        "target_max": float(out.targets.max(dim=1).values.mean()),
        "distinct_targets": float(out.targets.argmax(dim=1).unique().numel()),
        "agreement": argmax_agreement(
            anchors.detach().float(), out.targets, prototypes.detach().float(), config
        ),
    }
    return out.loss, stats


def argmax_agreement(
    anchors: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor, config: PretrainConfig
) -> float:
    """Share of anchor views whose most likely prototype is their target's (view-major rows)."""
    anchor_choice = anchor_log_probabilities(anchors, prototypes, config.loss.tau).argmax(dim=1)
    return float((anchor_choice == targets.argmax(dim=1)).float().mean())


def _optimise(parts: TrainParts, loss: torch.Tensor, frozen: list[nn.Parameter]) -> None:
    """Backward, optional clipping, then the optimiser step; ``frozen`` parameters skip it."""
    parts.optimizer.zero_grad(set_to_none=True)
    clip = parts.config.optim.clip_grad
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        if clip > 0:
            parts.scaler.unscale_(parts.optimizer)
            torch.nn.utils.clip_grad_norm_(parts.anchor.parameters(), clip)
        for parameter in frozen:
            parameter.grad = None
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        return
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(parts.anchor.parameters(), clip)
    for parameter in frozen:
        parameter.grad = None
    parts.optimizer.step()


def _autocast(parts: TrainParts) -> contextlib.AbstractContextManager[object]:
    if parts.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=parts.device.type, dtype=parts.amp_dtype)
