"""Early stopping on a loss that should go down (the paper: training loss, patience 5, min delta 1e-5)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    patience: int = 5
    min_delta: float = 1e-5
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1 or self.min_delta < 0:
            raise ValueError(f"need patience >= 1 and min_delta >= 0, got {self.patience}, {self.min_delta}")

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's loss; True when training should stop.

        An epoch improves when its loss is below the best so far by more than min_delta;
        training stops after ``patience`` epochs in a row without improvement.
        """
        if not math.isfinite(value):
            raise ValueError(f"epoch {epoch} has a non-finite loss {value}")
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, float | int]) -> EarlyStopping:
        return cls(**state)  # type: ignore[arg-type]
