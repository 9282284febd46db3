"""Running a classifier: the one forward pass to logits, and predictions from files or the cache.

``class_logits`` (``CXRClassifier.embed``, then the head) is what fine-tuning trains and
everything here predicts with. ``predict_files``: each file is decoded by the core decoder and
preprocessed by ``cxrmsn.preprocess.preprocess`` (the function export and serving call), so the
numbers measured here are the numbers the exported model gives, up to float rounding.
``predict_cached``: the plain views of the uint8 image cache (``training.data.cache``), for
validation during fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier
from cxrmsn.preprocess import PreprocessConfig
from training.downstream.embeddings import cuda_precision
from training.downstream.images import CachedViews, FileViews, collate_views


def class_logits(model: CXRClassifier, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, labels], CLS embeddings [B, D]) of a batch of views."""
    embedding = model.embed(views)
    return model.head(embedding), embedding


@torch.inference_mode()
def predict_files(
    model: CXRClassifier,
    paths: Sequence[Path],
    preprocessing: PreprocessConfig,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(probabilities [N, 14], embeddings [N, D], indices of undecodable files)."""
    model = model.to(device).eval()
    loader: DataLoader[Any] = DataLoader(
        FileViews(paths, preprocessing), batch_size=batch_size, num_workers=workers, collate_fn=collate_views
    )
    probabilities = np.zeros((len(paths), model.head.out_features), dtype=np.float32)
    embeddings = np.zeros((len(paths), model.encoder.embed_dim), dtype=np.float32)
    decoded: list[int] = []
    for _, good, views in loader:
        if not good:
            continue
        logits, embedding = class_logits(model, views[:, 0].to(device))
        probabilities[good] = torch.sigmoid(logits).float().cpu().numpy()
        embeddings[good] = embedding.float().cpu().numpy()
        decoded += good
    return probabilities, embeddings, sorted(set(range(len(paths))) - set(decoded))


@torch.inference_mode()
def predict_cached(
    model: CXRClassifier,
    images: np.ndarray,
    indices: np.ndarray,
    preprocessing: PreprocessConfig,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> np.ndarray:
    """Probabilities [N, 14] of the cached plain views ``images[indices]`` (bf16 autocast on CUDA)."""
    model.eval()
    loader: DataLoader[Any] = DataLoader(
        CachedViews(images, indices, preprocessing), batch_size=batch_size, num_workers=workers
    )
    out = []
    for views, _ in loader:
        with cuda_precision(device):
            logits, _ = class_logits(model, views.to(device))
        out.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), dtype=np.float32)
