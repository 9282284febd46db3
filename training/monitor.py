"""Is pretraining learning? A probe of the EMA target encoder and collapse signals.

Every ``monitor.every`` epochs (and once before the first, so that every run carries its
own random-initialisation reference) the target encoder embeds the labelled images of the
manifest's training and validation splits (the centre view the downstream code uses:
``resize_and_crop`` to the target view size, cached as 8 bits). A probe fitted on the
training embeddings is scored on validation as macro AUROC over the labels with a positive
and a negative in both splits (the paper's label policy: blank and uncertain labels count as absent):

- ``logistic``: one L2-regularised logistic regression per label on standardised
  embeddings (scikit-learn);
- ``knn``: cosine k-nearest neighbours, the score being the neighbours' mean label.

Collapse signals on the same validation images: how many prototypes the target branch's
assignments use, and the per-dimension standard deviation of the L2-normalised CLS
embeddings times sqrt(D) (about 1 for embeddings spread over the sphere, 0 when every image
maps to one point; SimSiam's collapse check). The training steps add the mean of the target
probabilities' maximum, the entropy of the mean anchor prediction and how often an anchor's
most likely prototype is its target's.

``assess`` turns the history into warnings: *collapsing* when the embedding spread or the
prototypes in use fall below the configured floors, *not learning* when, after
``warn_after`` epochs, the probe is not ``min_gain`` above its value at initialisation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrmsn.labels import LABELS
from cxrmsn.preprocess import DEFAULT_PREPROCESS, normalise
from training.config import MonitorConfig
from training.data.cache import load_or_build_cache
from training.data.manifest import ManifestRow, resolve_image_path
from training.downstream.labels import label_matrix

log = logging.getLogger(__name__)

MONITOR_COLUMNS = (
    "epoch",
    "probe_auroc",
    "probe_labels",
    "embedding_std",
    "prototypes_used",
    "target_max",
    "mean_entropy_ratio",
    "agreement",
    "status",
)


@dataclass(frozen=True)
class ProbeSet:
    """The labelled images the probe uses: uint8 [N, S, S] views, targets and masks per split."""

    train_images: np.ndarray
    train_targets: np.ndarray  # float32 [N, 14]
    train_mask: np.ndarray  # bool [N, 14]
    valid_images: np.ndarray
    valid_targets: np.ndarray
    valid_mask: np.ndarray

    @property
    def usable_labels(self) -> list[int]:
        """Labels with a positive and a negative in both splits."""
        return [
            index
            for index in range(len(LABELS))
            if _has_both(self.train_targets[:, index], self.train_mask[:, index])
            and _has_both(self.valid_targets[:, index], self.valid_mask[:, index])
        ]


def _has_both(targets: np.ndarray, mask: np.ndarray) -> bool:
    values = targets[mask]
    return bool(values.size) and 0 < values.sum() < values.size


def load_probe_set(
    manifest: Path,
    rows: Sequence[ManifestRow],
    config: MonitorConfig,
    *,
    size: int,
    cache_dir: Path,
    seed: int,
) -> ProbeSet | None:
    """The probe's images and labels, or None when the manifest has no usable labelled rows."""
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split in ("valid", "train"):  # valid first: without labels there, nothing to cache
        chosen = [r for r in rows if r.split == split and any(v is not None for v in r.labels)]
        if config.max_images and len(chosen) > config.max_images:
            picked = np.random.default_rng(seed).choice(len(chosen), config.max_images, replace=False)
            chosen = [chosen[i] for i in sorted(picked)]
        if not chosen:
            return None
        paths = [resolve_image_path(manifest, row) for row in chosen]
        cache = load_or_build_cache(paths, size, cache_dir, workers=1, build=True, wait_s=3600.0)
        usable = cache.usable
        labels = label_matrix([chosen[i] for i in usable])
        splits[split] = (np.asarray(cache.images[usable]), labels.targets, labels.mask)
    probe = ProbeSet(*splits["train"], *splits["valid"])
    return probe if probe.usable_labels else None


@torch.no_grad()
def embed(
    encoder: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 128
) -> torch.Tensor:
    """CLS embeddings [N, D] of uint8 [N, S, S] views through ``encoder`` (a timm ViT)."""
    from training.msn.model import encode_cls

    chunks = []
    for start in range(0, len(images), batch_size):
        grey = images[start : start + batch_size].astype(np.float32) / 255.0
        batch = np.stack([normalise(g, DEFAULT_PREPROCESS) for g in grey])
        chunks.append(encode_cls(encoder, torch.from_numpy(batch).to(device)).float().cpu())  # type: ignore[arg-type]
    return torch.cat(chunks)


def probe_auroc(
    train: np.ndarray, valid: np.ndarray, probe: ProbeSet, config: MonitorConfig, seed: int
) -> tuple[float, int]:
    """Macro validation AUROC of the probe over ``probe.usable_labels``, and how many labels."""
    from sklearn.metrics import roc_auc_score

    labels = probe.usable_labels
    scores = _knn_scores(train, valid, probe, labels, config.knn_k) if config.probe == "knn" else None
    aurocs = []
    for column, index in enumerate(labels):
        fit_mask, eval_mask = probe.train_mask[:, index], probe.valid_mask[:, index]
        if scores is not None:
            predicted = scores[:, column]
        else:
            predicted = _logistic_scores(
                train[fit_mask], probe.train_targets[fit_mask, index], valid, config.logistic_c, seed
            )
        aurocs.append(roc_auc_score(probe.valid_targets[eval_mask, index], predicted[eval_mask]))
    return float(np.mean(aurocs)), len(labels)


def _logistic_scores(x: np.ndarray, y: np.ndarray, valid: np.ndarray, c: float, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    model.fit((x - mean) / std, y)
    result: np.ndarray = model.decision_function((valid - mean) / std)
    return result


def _knn_scores(
    train: np.ndarray, valid: np.ndarray, probe: ProbeSet, labels: list[int], k: int
) -> np.ndarray:
    """[N_valid, len(labels)]: the mean label of the k most similar training images (cosine)."""
    a = train / (np.linalg.norm(train, axis=1, keepdims=True) + 1e-12)
    b = valid / (np.linalg.norm(valid, axis=1, keepdims=True) + 1e-12)
    similarity = b @ a.T
    result = np.zeros((len(valid), len(labels)), dtype=np.float64)
    for column, index in enumerate(labels):
        annotated = np.flatnonzero(probe.train_mask[:, index])
        count = min(k, len(annotated))
        nearest = np.argsort(-similarity[:, annotated], axis=1)[:, :count]
        result[:, column] = probe.train_targets[annotated[nearest], index].mean(axis=1)
        # Ties (many images with the same neighbour mean) are broken by the mean similarity.
        result[:, column] += 1e-6 * np.take_along_axis(similarity[:, annotated], nearest, axis=1).mean(axis=1)
    return result


def embedding_spread(embeddings: torch.Tensor) -> float:
    """sqrt(D) x the mean per-dimension std of L2-normalised embeddings: ~1 spread, 0 collapsed."""
    normalised = F.normalize(embeddings, dim=1)
    return float(normalised.std(dim=0).mean() * math.sqrt(embeddings.shape[1]))


@torch.no_grad()
def prototypes_used(head: torch.nn.Module, embeddings: torch.Tensor, prototypes: torch.Tensor) -> int:
    """How many prototypes are the most likely assignment of at least one target projection."""
    projections = head(embeddings.to(prototypes.device))
    logits = F.normalize(projections, dim=1) @ F.normalize(prototypes, dim=1).T
    return int(logits.argmax(dim=1).unique().numel())


def measure(
    target: torch.nn.Module,
    prototypes: torch.Tensor,
    probe: ProbeSet,
    config: MonitorConfig,
    *,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """Probe AUROC and the embedding-side collapse signals of the target network now."""
    encoder, head = target.get_submodule("encoder"), target.get_submodule("head")
    was_training = head.training
    head.eval()  # BatchNorm: running statistics, so the count does not depend on batch make-up
    try:
        train = embed(encoder, probe.train_images, device)
        valid = embed(encoder, probe.valid_images, device)
        auroc, count = probe_auroc(train.numpy(), valid.numpy(), probe, config, seed)
        used = prototypes_used(head, valid.to(device), prototypes.detach())
    finally:
        head.train(was_training)
    return {
        "probe_auroc": auroc,
        "probe_labels": count,
        "embedding_std": embedding_spread(valid),
        "prototypes_used": used,
    }


def assess(
    history: Sequence[dict[str, Any]], config: MonitorConfig, num_prototypes: int, *, multimodal: bool = False
) -> str:
    """``ok``, or what is wrong: ``collapsing: ...`` / ``not learning: ...`` (latest record).

    ``multimodal``: the anchor branch fuses EHR features (MSN + EHR). Its head is trained on
    g(CLS, EHR) while the target head sees the bare CLS, so the target projections' unbalanced
    argmax settles on a few prototypes even in a run that learns (seen with small-D: 1-3 in use
    while the probe rose); the prototype count is then recorded but not a collapse signal.
    """
    if not history:
        return "ok"
    latest = history[-1]
    problems = []
    if latest["embedding_std"] < config.min_embedding_std:
        problems.append(
            f"collapsing: embedding spread {latest['embedding_std']:.3f} < {config.min_embedding_std}"
        )
    floor = max(2, math.ceil(config.min_prototypes_fraction * num_prototypes))
    if not multimodal and latest["epoch"] > 0 and latest["prototypes_used"] < floor:
        problems.append(f"collapsing: {latest['prototypes_used']} prototypes in use (< {floor})")
    initial = history[0]
    if initial["epoch"] == 0 and latest["epoch"] >= config.warn_after:
        gain = latest["probe_auroc"] - initial["probe_auroc"]
        if gain < config.min_gain:
            problems.append(
                f"not learning: probe AUROC {latest['probe_auroc']:.3f} vs {initial['probe_auroc']:.3f} "
                f"at initialisation after {latest['epoch']} epochs (gain {gain:+.3f} < {config.min_gain})"
            )
    return "; ".join(problems) or "ok"
