"""The paper's linear-evaluation protocol on cached embeddings: five runs, select on validation.

A linear layer on the CLS embedding, sigmoid + binary cross-entropy over the (image, label)
pairs the label mask keeps (mean over those pairs in the batch). Adam, batch 64, at most 50
epochs. Runs (REFERENCE section 1): lr 1e-3, 5e-4, 1e-4 with cosine annealing over the
maximum number of epochs and early stopping on the validation macro AUROC (patience 5, min
delta 1e-4); lr 5e-4, 1e-4 with ReduceLROnPlateau on the validation macro AUROC (factor 0.5,
patience 3, as the paper's code) and no early stopping. Each run keeps
the head of its best validation epoch; the selected run is the one with the highest best
validation macro AUROC (the first of equals). Every run starts from the same seeded head and
batch order, so the runs differ only in their schedule.

With ``head.features=standardized`` every embedding dimension is first shifted and scaled to
zero mean and unit variance over the training views (MAE's linear probe: a BatchNorm without
affine parameters); the scaling is folded into the saved linear layer, so the classifier, its
export and serving are unchanged. ``raw`` (the default) is the paper's head.

With ``head.solver=logistic`` the five runs are replaced by one L2-regularised logistic
regression per label (scikit-learn's L-BFGS) on every cached training view, for each inverse
strength C in ``head.logistic_cs``; the C with the highest validation macro AUROC is kept
(CLIP's linear probe). It suits small labelled sets, where the Adam runs' selection on a
small validation split is noisy.

Each epoch of the Adam runs the head sees one embedding per training image, drawn (seeded by epoch) from its
plain view and its cached augmented copies (``training.downstream.embeddings``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.downstream.config import HeadConfig
from training.downstream.labels import LabelMatrix
from training.downstream.metrics import macro_auroc
from training.downstream.selection import BestEpoch, best_run

log = logging.getLogger(__name__)
STANDARDIZE_EPS = 1e-5  # BatchNorm's: keeps a constant dimension finite


@dataclass(frozen=True)
class RunSpec:
    name: str
    lr: float  # the learning rate; for "logistic", the inverse L2 strength C
    schedule: str  # "cosine" (with early stopping), "plateau" (ReduceLROnPlateau, none), "logistic"


@dataclass
class RunResult:
    spec: RunSpec
    best_epoch: int  # 1-based
    best_valid_macro_auroc: float
    stopped: str  # "early_stopping", "max_epochs" or "converged" (logistic)
    history: list[dict[str, float]] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # the head at its best epoch

    @classmethod
    def from_tracker(cls, spec: RunSpec, tracker: BestEpoch) -> RunResult:
        """The run ``tracker`` followed, logged in one line."""
        log.info(
            "%s: best valid macro AUROC %.4f at epoch %d of %d (%s)",
            spec.name,
            tracker.best_score,
            tracker.best_epoch,
            len(tracker.history),
            tracker.stopped,
        )
        best = tracker.best_epoch, tracker.best_score
        return cls(spec, *best, tracker.stopped, tracker.history, tracker.state)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "lr": self.spec.lr,
            "schedule": self.spec.schedule,
            "early_stopping": self.spec.schedule == "cosine",
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "best_valid_macro_auroc": round(self.best_valid_macro_auroc, 6),
            "stopped": self.stopped,
            "history": self.history,
        }


@dataclass(frozen=True)
class FeatureScaling:
    """x -> (x - mean) / scale per embedding dimension; the identity for raw features."""

    mean: np.ndarray  # float32 [D]
    scale: np.ndarray  # float32 [D]

    @classmethod
    def fit(cls, train_views: np.ndarray, features: str) -> FeatureScaling:
        """From every training view ([N, V, D]); ``features`` is HeadConfig.features."""
        dim = train_views.shape[2]
        if features == "raw":
            return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))
        flat = train_views.reshape(-1, dim).astype(np.float64)
        scale = np.sqrt(flat.var(axis=0) + STANDARDIZE_EPS)
        return cls(flat.mean(axis=0).astype(np.float32), scale.astype(np.float32))

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        return ((embeddings - self.mean) / self.scale).astype(np.float32)

    def fold(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The linear layer on raw embeddings equal to ``state`` on scaled ones."""
        weight = state["weight"] / torch.from_numpy(self.scale)
        bias = state["bias"] - weight @ torch.from_numpy(self.mean)
        return {"weight": weight, "bias": bias}


def protocol_runs(config: HeadConfig) -> list[RunSpec]:
    if config.solver == "logistic":
        return [RunSpec(f"logistic_C{c:g}", c, "logistic") for c in config.logistic_cs]
    cosine = [RunSpec(f"cosine_lr{lr:g}", lr, "cosine") for lr in config.cosine_lrs]
    return cosine + [RunSpec(f"plateau_lr{lr:g}", lr, "plateau") for lr in config.plateau_lrs]


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the pairs ``mask`` keeps (0 when it keeps none)."""
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def train_head(
    spec: RunSpec,
    train_views: np.ndarray,
    train_labels: LabelMatrix,
    valid_embeddings: np.ndarray,
    valid_labels: LabelMatrix,
    macro_columns: list[int],
    config: HeadConfig,
    *,
    seed: int,
) -> RunResult:
    """One run. ``train_views`` [N, V, D]: V embeddings per image (plain first)."""
    torch.manual_seed(seed)
    head = nn.Linear(train_views.shape[2], train_labels.targets.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=spec.lr, weight_decay=config.weight_decay)
    tracker = BestEpoch(
        optimizer,
        spec.schedule,
        max_epochs=config.max_epochs,
        patience=config.patience,
        min_delta=config.min_delta,
        plateau_factor=config.plateau_factor,
        plateau_patience=config.plateau_patience,
    )
    targets = torch.from_numpy(train_labels.targets)
    mask = torch.from_numpy(train_labels.mask.astype(np.float32))
    valid = torch.from_numpy(valid_embeddings)
    for epoch in range(config.max_epochs):
        loss = _epoch(head, optimizer, train_views, targets, mask, config.batch_size, seed=seed, epoch=epoch)
        with torch.no_grad():
            probabilities = torch.sigmoid(head(valid)).numpy()
        if tracker.end_epoch(
            epoch, loss=loss, score=macro_auroc(probabilities, valid_labels, macro_columns), module=head
        ):
            break
    return RunResult.from_tracker(spec, tracker)


def fit_logistic(
    spec: RunSpec,
    train_views: np.ndarray,
    train_labels: LabelMatrix,
    valid_embeddings: np.ndarray,
    valid_labels: LabelMatrix,
    macro_columns: list[int],
    config: HeadConfig,
    *,
    seed: int,
) -> RunResult:
    """One L2 logistic regression per label on every training view (C = ``spec.lr``).

    A label without both classes among its kept training pairs gets a zero row (probability
    0.5); such labels are reported as untrained downstream.
    """
    from sklearn.linear_model import LogisticRegression

    count, views, dim = train_views.shape
    flat = train_views.reshape(count * views, dim)
    weight = np.zeros((train_labels.targets.shape[1], dim), np.float32)
    bias = np.zeros(train_labels.targets.shape[1], np.float32)
    for j in range(len(bias)):
        keep = np.repeat(train_labels.mask[:, j], views)
        targets = np.repeat(train_labels.targets[:, j], views)[keep]
        if len(np.unique(targets)) < 2:
            continue
        model = LogisticRegression(C=spec.lr, max_iter=2000, random_state=seed).fit(flat[keep], targets)
        weight[j], bias[j] = model.coef_[0], model.intercept_[0]
    state = {"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)}
    probabilities = 1 / (1 + np.exp(-(valid_embeddings @ weight.T + bias)))
    score = macro_auroc(probabilities, valid_labels, macro_columns)
    if score is None:
        raise ValueError("the validation macro AUROC is undefined: no estimable label in valid")
    log.info("%s: valid macro AUROC %.4f", spec.name, score)
    history = [{"epoch": 1, "valid_macro_auroc": round(score, 6), "C": spec.lr}]
    return RunResult(spec, 1, score, "converged", history, state)


def _epoch(
    head: nn.Linear,
    optimizer: torch.optim.Optimizer,
    train_views: np.ndarray,
    targets: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
) -> float:
    """One pass over the training images, one randomly chosen view each; the mean batch loss."""
    rng = np.random.default_rng([seed, epoch])
    count, views = train_views.shape[:2]
    chosen = torch.from_numpy(train_views[np.arange(count), rng.integers(0, views, count)])
    order = torch.from_numpy(rng.permutation(count))
    losses = []
    for start in range(0, count, batch_size):
        batch = order[start : start + batch_size]
        loss = masked_bce(head(chosen[batch]), targets[batch], mask[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def run_protocol(
    train_views: np.ndarray,
    train_labels: LabelMatrix,
    valid_embeddings: np.ndarray,
    valid_labels: LabelMatrix,
    macro_columns: list[int],
    config: HeadConfig,
    *,
    seed: int,
) -> tuple[list[RunResult], RunResult]:
    """Every run of the protocol and the one selected on validation; heads act on raw embeddings."""
    if not macro_columns:
        raise ValueError(
            "no label has training signal and both positives and negatives in the validation split: "
            "nothing to select on"
        )
    scaling = FeatureScaling.fit(train_views, config.features)
    train_scaled, valid_scaled = scaling.apply(train_views), scaling.apply(valid_embeddings)
    train_one = fit_logistic if config.solver == "logistic" else train_head
    results = [
        train_one(
            spec, train_scaled, train_labels, valid_scaled, valid_labels, macro_columns, config, seed=seed
        )
        for spec in protocol_runs(config)
    ]
    for result in results:
        result.state = scaling.fold(result.state)
    best = best_run(results)
    return results, best
