"""Frozen-encoder embeddings, computed once and cached on disk.

Linear evaluation trains only a linear head, so the frozen EMA target encoder runs once per
image rather than once per epoch. For every training image the cache holds the plain view's
CLS embedding and ``augment.copies`` embeddings of the paper's augmented views (flip, random
affine, centre crop; ``training.downstream.augment``), each drawn with its own seeded
generator; every epoch the head sees one of these 1 + copies embeddings per image, chosen at
random (seeded by epoch). Validation and test images get the plain view only, which is
exactly what export and serving compute.

A cache file ``<cache_dir>/embeddings/<key>.npz`` is keyed by the sha256 of the encoder file,
the preprocessing, the augmentation, the number of copies, the seed and every image path
with its size, so any change gives a new file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrmsn.checkpoint import CheckpointError, CheckpointMetadata, load_checkpoint, load_state_strictly
from cxrmsn.fileio import atomic_write_bytes, sha256_file
from cxrmsn.model import CXRClassifier, architecture_spec
from cxrmsn.preprocess import PreprocessConfig
from training.downstream.augment import eval_preprocessing
from training.downstream.config import AugmentConfig
from training.downstream.images import FileViews, collate_views
from training.run_folder import ENCODER_FILES

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # 2: images decoded at reduced resolution where the codec can (issue 18)


def cuda_precision(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast, with TF32 matmuls and convolutions for what stays float32, on CUDA
    (as pretraining runs); a no-op elsewhere, so CPU results are float32 as before."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


@dataclass
class Encoder:
    model: CXRClassifier  # the encoder's weights; a fresh (untrained) head
    metadata: CheckpointMetadata
    path: Path
    sha256: str
    eval_view: str = "paper"  # augment.eval_view

    @property
    def preprocessing(self) -> PreprocessConfig:
        """The linear-evaluation view (``augment.eval_preprocessing``; by default the paper's,
        not the pretraining's no-op crop): what training, testing and the saved classifier use."""
        return eval_preprocessing(self.metadata.preprocess_config, self.eval_view)


def resolve_encoder_path(path: Path, weights: str = "last") -> Path:
    """A checkpoint file, or a pretraining run folder: its last epoch's encoder, or with
    ``weights="best_loss"`` the best training-loss epoch's (``ENCODER_FILES``)."""
    if path.is_dir():
        path = path / "checkpoints" / ENCODER_FILES[weights]
    if not path.is_file():
        raise ValueError(f"no encoder checkpoint at {path}")
    return path


def load_encoder(path: Path, eval_view: str = "paper") -> Encoder:
    """An encoder checkpoint (kind "encoder") loaded strictly into ``CXRClassifier(arch).encoder``."""
    path = resolve_encoder_path(path)
    try:
        state, metadata = load_checkpoint(path, kind="encoder")
        model = CXRClassifier(metadata.architecture, num_labels=len(metadata.labels))
        load_state_strictly(model.encoder, state, source=str(path))
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None
    size = architecture_spec(metadata.architecture).img_size
    if metadata.preprocess_config.crop != size:
        raise ValueError(
            f"{path} was pretrained on {metadata.preprocess_config.crop} px target views, but the classifier "
            f"takes {size} px inputs (as export and serving feed it): pretrain with views.target_size={size}"
        )
    return Encoder(model.eval(), metadata, path, sha256_file(path), eval_view)


@dataclass
class SplitEmbeddings:
    plain: np.ndarray  # float32 [N, D]: the inference view
    augmented: np.ndarray  # float32 [N, copies, D]
    failed: list[int]  # indices of undecodable images (their rows are zeros; callers drop them)

    def views(self) -> np.ndarray:
        """[N, 1 + copies, D]: the plain view first."""
        return np.concatenate([self.plain[:, None], self.augmented], axis=1)

    def without(self, failed: Sequence[int]) -> SplitEmbeddings:
        keep = np.setdiff1d(np.arange(len(self.plain)), np.asarray(failed, dtype=int))
        return SplitEmbeddings(self.plain[keep], self.augmented[keep], [])


def embedding_key(
    encoder_sha256: str,
    paths: Sequence[Path],
    preprocessing: PreprocessConfig,
    augment: AugmentConfig | None,
    copies: int,
    seed: int,
) -> str:
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        "encoder": encoder_sha256,
        "preprocessing": preprocessing.to_dict(),
        "augment": None if augment is None or copies == 0 else asdict(augment) | {"copies": copies},
        "seed": seed,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in paths:
        size = path.stat().st_size if path.exists() else -1
        digest.update(f"\n{path.resolve()}\t{size}".encode())
    return digest.hexdigest()[:32]


def cached_embeddings(
    encoder: Encoder,
    paths: Sequence[Path],
    *,
    cache_dir: Path,
    augment: AugmentConfig | None,
    copies: int,
    seed: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    what: str,
) -> SplitEmbeddings:
    """Embeddings of ``paths`` from the cache, computing and storing them when absent."""
    key = embedding_key(encoder.sha256, paths, encoder.preprocessing, augment, copies, seed)
    file = cache_dir / "embeddings" / f"{key}.npz"
    if file.is_file():
        with np.load(file) as stored:
            log.info("%s embeddings: cached (%s)", what, file)
            return SplitEmbeddings(stored["plain"], stored["augmented"], stored["failed"].tolist())
    started = time.perf_counter()
    result = embed_files(
        encoder,
        paths,
        augment=augment,
        copies=copies,
        seed=seed,
        batch_size=batch_size,
        workers=workers,
        device=device,
    )
    buffer = io.BytesIO()
    np.savez(buffer, plain=result.plain, augmented=result.augmented, failed=np.asarray(result.failed, int))
    atomic_write_bytes(file, buffer.getvalue())
    seconds = time.perf_counter() - started
    views = len(paths) * (1 + copies)
    log.info(
        "%s embeddings: %d images x %d views in %.1f s (%.1f views/s) -> %s",
        what,
        len(paths),
        1 + copies,
        seconds,
        views / max(seconds, 1e-9),
        file,
    )
    return result


@torch.inference_mode()
def embed_files(
    encoder: Encoder,
    paths: Sequence[Path],
    *,
    augment: AugmentConfig | None,
    copies: int,
    seed: int,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> SplitEmbeddings:
    """CLS embeddings of the plain view and ``copies`` augmented views of every image."""
    from torch.utils.data import DataLoader

    model = encoder.model.to(device).eval()
    dataset = FileViews(paths, encoder.preprocessing, augment=augment, copies=copies, seed=seed)
    per_batch = max(1, batch_size // (1 + copies))
    loader: DataLoader[Any] = DataLoader(
        dataset,
        batch_size=per_batch,
        num_workers=workers,
        collate_fn=collate_views,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    width = model.encoder.embed_dim
    embeddings = np.zeros((len(paths), 1 + copies, width), dtype=np.float32)
    decoded: list[int] = []
    for _, good, views in loader:
        if not good:
            continue
        flat = views.to(device, non_blocking=True).flatten(0, 1)  # copy as loaded, reshape there
        with cuda_precision(device):
            out = model.embed(flat).float().cpu().numpy()
        embeddings[good] = out.reshape(len(good), 1 + copies, width)
        decoded += good
    failed = sorted(set(range(len(paths))) - set(decoded))
    if failed:
        log.warning("%d images could not be decoded and are left out, e.g. %s", len(failed), paths[failed[0]])
    return SplitEmbeddings(embeddings[:, 0], embeddings[:, 1:], failed)
