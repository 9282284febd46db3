"""Probabilities and CLS embeddings of a classifier on image files, by the inference path.

Each file is decoded by the core decoder and preprocessed by ``cxrmsn.preprocess.preprocess``
(the function export and serving call), then run through ``CXRClassifier``: so the numbers
measured here are the numbers the exported model gives, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrmsn.model import CXRClassifier
from cxrmsn.preprocess import PreprocessConfig
from training.downstream.images import FileViews, collate_views


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
        embedding = model.embed(views[:, 0].to(device))
        probabilities[good] = torch.sigmoid(model.head(embedding)).float().cpu().numpy()
        embeddings[good] = embedding.float().cpu().numpy()
        decoded += good
    return probabilities, embeddings, sorted(set(range(len(paths))) - set(decoded))
