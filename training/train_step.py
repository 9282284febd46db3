"""One pretraining step, shared by the loop (training.pretrain) and the benchmark.

An MSN step: masked anchor views (and EHR) through the anchor network, the unmasked target
view through the EMA target network without gradients, the MSN loss, AdamW (with the
scheduled learning rate and weight decay, optional clipping, optional float16 scaling),
then the EMA update of the target.

The baselines (``config.method``, ``training.baselines``) share everything but the networks
and the loss: DINO (student = ``anchor``, EMA teacher = ``target``, all views, no masking)
and MAE (``anchor`` = encoder + decoder on the masked target view, no EMA network).

Host/device synchronisation: ``run_step`` keeps every statistic a device tensor and never
waits for the device; the loss's finiteness is a device flag read with the statistics
(``StepStats.read``, one transfer), so a loop reading every ``train.log_every`` steps (and
``EpochSums`` once an epoch) lets the CPU run ahead of the GPU. ``train_step`` reads at
once (the old ``dict[str, float]`` interface). The batch is copied to the device as the
loader gives it (pinned, non-blocking) and rearranged view-major there.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.baselines.dino import DINOStudent, DINOTeacher, dino_forward
from training.baselines.dino_loss import teacher_temperature
from training.baselines.mae import MAEModel, mae_forward
from training.config import PretrainConfig
from training.distributed import DistInfo, all_reduce_sum_
from training.msn.ema import ema_update_, momentum_at
from training.msn.masking import sample_keep_indices
from training.msn.model import MSNAnchor, MSNTarget, num_patches
from training.msn.msn_loss import anchor_log_probabilities, msn_loss
from training.msn.views import to_model_input
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
        # Copy first (the loader's pinned batch, non-blocking), rearrange on the device: a
        # transpose on the host would make an unpinned copy and a blocking transfer.
        views = to_model_input(views.to(parts.device, non_blocking=True))
        group = views.transpose(0, 1).reshape(-1, *views.shape[2:])
        groups.append(group)
        keep = None
        if masked and mask.ratio > 0:
            patches = num_patches(encoder, group.shape[-1])
            keep = sample_keep_indices(
                group.shape[0], patches, mask.ratio, per_sample=mask.per_sample, device=parts.device
            )
        keeps.append(keep)
    return groups, keeps


VIEW_KEYS = ("target", "rand", "focal")


def device_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of the loader's batch copied to ``device`` as it is (pinned, non-blocking),
    uint8 views normalised there (``MultiViewTransform(uint8=True)``)."""
    moved = {name: value.to(device, non_blocking=True) for name, value in batch.items()}
    return moved | {name: to_model_input(moved[name]) for name in VIEW_KEYS if name in moved}


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


Stat = torch.Tensor | float


@dataclass
class StepStats:
    """One step's scalars, device tensors (or host floats) until ``read``."""

    step: int
    values: dict[str, Stat]
    finite: torch.Tensor  # bool device scalar: was the loss finite

    def read(self) -> dict[str, float]:
        """The scalars as floats, one device-to-host transfer; FloatingPointError when the
        step's loss was not finite."""
        names = [name for name, value in self.values.items() if isinstance(value, torch.Tensor)]
        tensors = [self.values[name].detach().float().reshape(()) for name in names]  # type: ignore[union-attr]
        flat = torch.stack([*tensors, self.finite.float().reshape(())]).tolist()
        if not flat[-1]:
            raise FloatingPointError(f"the loss is {flat[names.index('loss')]} at step {self.step}")
        read = dict(zip(names, flat[:-1], strict=True))
        return {name: read[name] if name in read else float(value) for name, value in self.values.items()}


@dataclass
class EpochSums:
    """Sums of the steps' statistics over an epoch: device tensors summed on the device, host
    floats (lr, momentum) on the host; nothing is copied either way until ``read`` (a logged
    step) or ``means`` (the epoch's end).

    Both check every step added so far, not only the one read: a non-finite loss raises
    ``FloatingPointError`` at the next read after it, naming its step and value. Under DDP
    both are collectives (every rank calls them at the same steps) and every rank raises
    when any rank saw a non-finite loss, so no rank is left waiting in the next all-reduce.
    """

    names: tuple[str, ...]
    device: torch.device
    sums: dict[str, torch.Tensor | float] = field(default_factory=dict)
    steps: int = 0
    first_bad_step: torch.Tensor | None = field(default=None, repr=False)  # -1 while all finite
    first_bad_loss: torch.Tensor | None = field(default=None, repr=False)  # the loss at that step

    def add(self, stats: StepStats) -> None:
        for name in self.names:
            value = stats.values[name]
            if isinstance(value, torch.Tensor):
                value = value.detach().double().reshape(())
            previous = self.sums.get(name)
            self.sums[name] = value if previous is None else previous + value
        # Device scalars (torch.where with Python scalars copies nothing from the host).
        loss = stats.values["loss"]
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().double().reshape(())
        else:
            loss = torch.full((), loss, dtype=torch.float64, device=stats.finite.device)
        bad = torch.where(stats.finite, -1, stats.step)
        if self.first_bad_step is None or self.first_bad_loss is None:
            self.first_bad_step, self.first_bad_loss = bad, loss
        else:
            fresh = self.first_bad_step < 0
            self.first_bad_loss = torch.where(fresh, loss, self.first_bad_loss)
            self.first_bad_step = torch.where(fresh, bad, self.first_bad_step)
        self.steps += 1

    def read(self, stats: StepStats) -> dict[str, float]:
        """``stats`` (the last step added) as floats, in one device-to-host transfer, after
        checking every step added so far on every rank (``FloatingPointError``)."""
        names = [name for name, value in stats.values.items() if isinstance(value, torch.Tensor)]
        tensors = [stats.values[name].detach().double().reshape(()) for name in names]  # type: ignore[union-attr]
        check = self._check()
        flat = torch.cat([torch.stack(tensors), check]).tolist() if tensors else check.tolist()
        self._raise_if_bad(flat[len(tensors) :])
        read = dict(zip(names, flat[: len(tensors)], strict=True))
        return {name: read[name] if name in read else float(value) for name, value in stats.values.items()}

    def means(self) -> dict[str, float]:
        """Step means over the steps of every rank (one all-reduce, one transfer);
        ``FloatingPointError`` when any step's loss on any rank was not finite."""
        if not self.steps:
            return {}
        values = [
            value if isinstance(value, torch.Tensor) else self._scalar(float(value))
            for value in (self.sums[name] for name in self.names)
        ]
        totals = all_reduce_sum_(torch.stack([*values, self._scalar(float(self.steps))]))
        flat = torch.cat([totals, self._check()]).tolist()
        self._raise_if_bad(flat[len(values) + 1 :])
        steps = flat[len(values)]
        return {name: total / steps for name, total in zip(self.names, flat[: len(values)], strict=True)}

    def _scalar(self, value: float) -> torch.Tensor:
        return torch.full((), value, dtype=torch.float64, device=self.device)

    def _check(self) -> torch.Tensor:
        """[first bad step here (-1: none), its loss, ranks that saw a bad step] on the device."""
        if self.first_bad_step is None or self.first_bad_loss is None:  # no step added yet
            step, loss, bad = self._scalar(-1.0), self._scalar(0.0), self._scalar(0.0)
        else:
            step, loss = self.first_bad_step.double(), self.first_bad_loss
            bad = (self.first_bad_step >= 0).double()
        ranks = all_reduce_sum_(bad.reshape(1).clone())
        return torch.cat([step.reshape(1), loss.reshape(1), ranks])

    @staticmethod
    def _raise_if_bad(check: list[float]) -> None:
        step, loss, ranks = check
        if step >= 0:
            raise FloatingPointError(f"the loss is {loss} at step {int(step)}")
        if ranks > 0:
            raise FloatingPointError(f"the loss was not finite on {int(ranks)} other rank(s)")


def train_step(parts: TrainParts, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
    """One optimiser step at global step ``step``; returns the step's scalars (waits for the
    device: loops that log every few steps use ``run_step`` and read when they log)."""
    return run_step(parts, batch, step).read()


def run_step(parts: TrainParts, batch: dict[str, torch.Tensor], step: int) -> StepStats:
    """One optimiser step at global step ``step``, without waiting for the device; the loss's
    finiteness is checked when the returned statistics are read."""
    config = parts.config
    lr, wd = set_schedules(parts, step)
    epoch = step // parts.steps_per_epoch
    batch = device_batch(batch, parts.device)
    with _autocast(parts):
        loss, stats = _forward(parts, batch, epoch)
    frozen: list[nn.Parameter] = []
    if isinstance(parts.anchor, DINOStudent) and epoch < config.dino.freeze_last_layer_epochs:
        frozen.append(parts.anchor.prototypes)  # DINO's freeze_last_layer
    _optimise(parts, loss, frozen)
    detached = loss.detach()
    result: dict[str, Stat] = {"loss": detached, "lr": lr, "weight_decay": wd}
    if parts.target is not None:
        momentum = momentum_at(step, parts.total_steps, config.ema)
        ema_update_(parts.target, parts.anchor, momentum)
        result["momentum"] = momentum
    return StepStats(step=step, values=result | stats, finite=torch.isfinite(detached))


def _forward(
    parts: TrainParts, batch: dict[str, torch.Tensor], epoch: int
) -> tuple[torch.Tensor, dict[str, Stat]]:
    """The method's loss (differentiable) and its scalars, inside autocast."""
    config = parts.config
    if isinstance(parts.anchor, MAEModel):
        loss, stats = mae_forward(
            parts.model, parts.anchor, batch, norm_pix_loss=config.mae.norm_pix_loss, device=parts.device
        )
        return loss, dict[str, Stat](stats)
    if isinstance(parts.anchor, DINOStudent) and isinstance(parts.target, DINOTeacher):
        dino = config.dino
        loss, stats = dino_forward(
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
        return loss, dict[str, Stat](stats)
    return _msn_forward(parts, batch)


def _msn_forward(parts: TrainParts, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Stat]]:
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
    with torch.no_grad():  # device tensors: no host/device synchronisation here
        target_choice = out.targets.argmax(dim=1)
        chosen = torch.zeros(out.targets.shape[1], device=out.targets.device)
        stats: dict[str, Stat] = {
            "cross_entropy": out.cross_entropy.detach(),
            "mean_entropy": out.mean_entropy.detach(),
            "target_max": out.targets.max(dim=1).values.mean(),
            "distinct_targets": chosen.index_fill_(0, target_choice, 1.0).sum(),  # unique() would sync
            "agreement": agreement_tensor(
                anchors.detach().float(), out.targets, prototypes.detach().float(), config
            ),
        }
    return out.loss, stats


def agreement_tensor(
    anchors: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor, config: PretrainConfig
) -> torch.Tensor:
    """Share of anchor views whose most likely prototype is their target's (view-major rows),
    a device scalar."""
    anchor_choice = anchor_log_probabilities(anchors, prototypes, config.loss.tau).argmax(dim=1)
    return (anchor_choice == targets.argmax(dim=1)).float().mean()


def argmax_agreement(
    anchors: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor, config: PretrainConfig
) -> float:
    """``agreement_tensor`` read as a float."""
    return float(agreement_tensor(anchors, targets, prototypes, config))


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
