"""Best-epoch selection on validation, shared by the downstream protocols' runs.

The paper's linear evaluation and fine-tuning both train a grid of runs and keep, per run,
the epoch with the highest validation macro AUROC, then the run with the highest such score
(REFERENCE section 1). A run's schedule is one of:

- ``cosine``: cosine annealing over ``max_epochs``, stepped after every epoch, and early
  stopping when the score has not risen by more than ``min_delta`` for ``patience`` epochs;
- ``plateau``: ReduceLROnPlateau on the score (mode max; ``factor``, ``patience``), no early
  stopping.

``BestEpoch.end_epoch`` does what the loop does after each epoch's training and validation
scoring, in this order: record the epoch (with the learning rate it trained at), keep the
module's state when the score beats every earlier epoch (the first of equals), step the
schedule, then (cosine) ask early stopping.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from training.early_stopping import EarlyStopping

SCHEDULES = ("cosine", "plateau")


class Scored(Protocol):
    @property
    def best_valid_macro_auroc(self) -> float: ...


RunT = TypeVar("RunT", bound=Scored)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    *,
    max_epochs: int,
    plateau_factor: float,
    plateau_patience: int,
) -> Any:
    """CosineAnnealingLR(T_max=max_epochs) or ReduceLROnPlateau(mode="max", ...)."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    if schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=plateau_factor, patience=plateau_patience
        )
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


class BestEpoch:
    """One run's schedule, early stopping and best validation epoch (see the module docstring)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: str,
        *,
        max_epochs: int,
        patience: int,
        min_delta: float,
        plateau_factor: float,
        plateau_patience: int,
    ) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.scheduler = make_scheduler(
            optimizer,
            schedule,
            max_epochs=max_epochs,
            plateau_factor=plateau_factor,
            plateau_patience=plateau_patience,
        )
        self.stopping = EarlyStopping(patience=patience, min_delta=min_delta)
        self.best_epoch = 0  # 1-based; 0 before the first epoch
        self.best_score = -math.inf
        self.state: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, float]] = []
        self.stopped = "max_epochs"

    def end_epoch(self, epoch: int, *, loss: float, score: float | None, module: nn.Module) -> bool:
        """Record 0-based ``epoch``; True when early stopping ends the run."""
        if score is None:
            raise ValueError("the validation macro AUROC is undefined: no estimable label in valid")
        lr = self.optimizer.param_groups[0]["lr"]
        self.history.append(
            {"epoch": epoch + 1, "loss": round(loss, 6), "valid_macro_auroc": round(score, 6), "lr": lr}
        )
        if score > self.best_score:
            self.best_epoch, self.best_score = epoch + 1, score
            self.state = copy.deepcopy(module.state_dict())
        if self.schedule == "cosine":
            self.scheduler.step()
            if self.stopping.update(-score, epoch):
                self.stopped = "early_stopping"
                return True
        else:
            self.scheduler.step(score)
        return False


def best_run(runs: Sequence[RunT]) -> RunT:
    """The run with the highest best-epoch validation score; the first of equals."""
    if not runs:
        raise ValueError("no runs to select from")
    return max(runs, key=lambda run: run.best_valid_macro_auroc)
