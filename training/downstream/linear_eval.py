"""``linear-eval``: a frozen pretrained encoder + the paper's linear-evaluation protocol.

1. Load the EMA target encoder (kind "encoder") strictly into ``CXRClassifier(arch).encoder``.
2. Read the manifest; choose rows (data sets, seeded subsets, label fraction); label matrices
   under the label policy.
3. Embed every image once (cached): valid and test by the plain inference view, training
   images by the plain view plus ``augment.copies`` augmented views.
4. Train the five heads (``training.downstream.linear``); select on validation.
5. Per-label temperatures on validation (``training.downstream.calibration``), thresholds on
   the calibrated validation probabilities, metrics with bootstrap CIs on valid and test, and the classifier
   (encoder + selected head) in the core checkpoint format (``training.downstream.artifact``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrmsn.labels import LABELS
from cxrmsn.model import CXRClassifier
from training.data.manifest import SPLITS
from training.distributed import resolve_device
from training.downstream.artifact import (
    Predictions,
    RunOutputs,
    finish,
    selection_columns,
    start_output,
    trained_labels,
)
from training.downstream.config import DownstreamConfig
from training.downstream.data import (
    DownstreamData,
    data_summary,
    prepare_data,
    pretraining_overlap,
    resolve_manifest,
)
from training.downstream.embeddings import Encoder, SplitEmbeddings, cached_embeddings, load_encoder
from training.downstream.linear import run_protocol

log = logging.getLogger(__name__)


def linear_eval(encoder_path: Path, config: DownstreamConfig, out: Path) -> dict[str, Any]:
    """Run the protocol into ``out``; returns the metrics also written to metrics.json."""
    started = time.perf_counter()
    start_output(out, config)
    encoder = load_encoder(encoder_path, config.augment.eval_view)
    data = prepare_data(config, resolve_manifest(config, out, encoder.metadata))
    device = resolve_device(config.device)
    embeddings = embed_splits(encoder, data, config, device)
    trained = trained_labels(data.labels["train"])
    columns = selection_columns(trained, data.labels["valid"])
    log.info(
        "linear evaluation: %d training images, trained labels %s, selection on %d labels",
        len(data.rows["train"]),
        trained,
        len(columns),
    )
    runs, best = run_protocol(
        embeddings["train"].views(),
        data.labels["train"],
        embeddings["valid"].plain,
        data.labels["valid"],
        columns,
        config.head,
        seed=config.seed,
    )
    model = encoder.model.cpu()
    model.head.load_state_dict(best.state)
    predictions = {split: _predictions(model, data, split, embeddings[split]) for split in SPLITS}
    outputs = RunOutputs(
        protocol="linear",
        model=model,
        preprocessing=encoder.preprocessing,
        trained=trained,
        predictions=predictions,
        training_data=data_summary(data, config),
        protocol_details={
            "selected_run": best.spec.name,
            "head_features": config.head.features,
            "selection": "highest best-epoch validation macro AUROC over the runs "
            f"(labels: {[LABELS[j] for j in columns]})",
            "runs": [run.summary() for run in runs],
            "augmentation": {
                "copies": config.augment.copies,
                "flip_p": config.augment.flip_p,
                "degrees": config.augment.degrees,
                "translate": config.augment.translate,
                "scale": list(config.augment.scale),
                "eval_view": config.augment.eval_view,
            },
            "pretraining_overlap": pretraining_overlap(encoder.metadata, data),
        },
        encoder=encoder_summary(encoder),
    )
    return finish(out, config, outputs, started=started).to_json()


def embed_splits(
    encoder: Encoder, data: DownstreamData, config: DownstreamConfig, device: torch.device
) -> dict[str, SplitEmbeddings]:
    """Cached embeddings of every split; undecodable images are dropped from ``data``."""
    result = {}
    for split in SPLITS:
        copies = config.augment.copies if split == "train" else 0
        embedded = cached_embeddings(
            encoder,
            data.paths(split),
            cache_dir=Path(config.data.cache_dir).expanduser(),
            augment=config.augment if copies else None,
            copies=copies,
            seed=config.seed,
            batch_size=config.data.embed_batch_size,
            workers=config.data.workers,
            device=device,
            what=split,
        )
        data.drop(split, embedded.failed)
        result[split] = embedded.without(embedded.failed)
    return result


def _predictions(model: CXRClassifier, data: DownstreamData, split: str, emb: SplitEmbeddings) -> Predictions:
    with torch.no_grad():
        logits = model.head(torch.from_numpy(emb.plain))
    return Predictions(
        paths=[str(p) for p in data.paths(split)],
        labels=data.labels[split],
        probabilities=torch.sigmoid(logits).numpy().astype(np.float32),
        embeddings=emb.plain,
        logits=logits.numpy().astype(np.float32),
    )


def encoder_summary(encoder: Encoder) -> dict[str, Any]:
    meta = encoder.metadata
    return {
        "path": str(encoder.path.resolve()),
        "sha256": encoder.sha256,
        "architecture": meta.architecture,
        "pretraining": meta.training_data.get("summary"),
        "ehr_features": meta.extra.get("ehr_features"),
        "pretraining_metrics": meta.metrics,
        "frozen": True,
    }
