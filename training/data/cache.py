"""A cache of decoded, resized images: one uint8 [N, S, S] ``.npy`` file, memory-mapped.

Each image is decoded once with the core decoder (``cxrmsn.imaging.decode``) and brought
to S x S with the core's ``resize_and_crop`` (shorter side to S, centre crop), then stored
as 8 bits (MIMIC-CXR-JPG, CheXpert and NIH are 8-bit sources). Epochs then read the
memory map, which DataLoader workers and DDP ranks on one machine share through the page
cache. The file name is a hash of the image paths, their sizes and S, so a changed image
list gets a new cache. Images that fail to decode are recorded (``failed``) and skipped.
The cache is written to a temporary name and renamed when complete: a killed build leaves
no half cache behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from cxrmsn.errors import DecodeError
from cxrmsn.fileio import atomic_write_text
from cxrmsn.imaging import decode
from cxrmsn.preprocess import PreprocessConfig, resize_and_crop
from training.distributed import wait_for_file

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


@dataclass(frozen=True)
class ImageCache:
    images: np.ndarray  # uint8 [N, S, S], memory-mapped
    failed: tuple[int, ...]  # indices (into the path list) that could not be decoded
    path: Path

    @property
    def usable(self) -> np.ndarray:
        """Indices of the images that decoded."""
        keep = np.ones(len(self.images), dtype=bool)
        keep[list(self.failed)] = False
        return np.flatnonzero(keep)


def cache_key(paths: Sequence[Path], size: int) -> str:
    digest = hashlib.sha256(f"cxr-msn image cache v{CACHE_FORMAT} size={size}\n".encode())
    for path in paths:
        stat_size = path.stat().st_size if path.exists() else -1
        digest.update(f"{path.resolve()}\t{stat_size}\n".encode())
    return digest.hexdigest()[:24]


def load_or_build_cache(
    paths: Sequence[Path],
    size: int,
    cache_dir: Path,
    *,
    workers: int = 1,
    build: bool = True,
    wait_s: float = 0,
) -> ImageCache:
    """The cache for ``paths`` at ``size``; built when absent and ``build``, else waited for.

    Under DDP rank 0 builds (``build=True``) while the other ranks wait up to ``wait_s``
    seconds for the finished file: polling, so a long build cannot time out a collective.
    """
    key = cache_key(paths, size)
    array_path, info_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if not info_path.is_file() and build:
        _build(paths, size, array_path, info_path, workers=workers)
    wait_for_file(info_path, timeout_s=wait_s, what="the image cache")
    info = json.loads(info_path.read_text())
    return ImageCache(np.load(array_path, mmap_mode="r"), tuple(info["failed"]), array_path)


def decode_resized(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 [size, size] through the core decoder and resize_and_crop."""
    pixels = decode(path.read_bytes()).pixels
    grey = resize_and_crop(pixels, PreprocessConfig(resize=size, crop=size))
    return np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)


def _decode_job(job: tuple[int, str, int]) -> tuple[int, np.ndarray | None, str]:
    index, path, size = job
    try:
        return index, decode_resized(Path(path), size), ""
    except (DecodeError, OSError) as exc:
        return index, None, f"{path}: {exc}"


def _build(paths: Sequence[Path], size: int, array_path: Path, info_path: Path, *, workers: int) -> None:
    array_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = array_path.with_name(f".{array_path.stem}.{os.getpid()}.tmp.npy")
    started = time.monotonic()
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
    jobs = [(i, str(p), size) for i, p in enumerate(paths)]
    failed: list[int] = []
    errors: list[str] = []
    for index, image, error in _run_jobs(jobs, workers):
        if image is None:
            failed.append(index)
            errors.append(error)
        else:
            out[index] = image
    out.flush()
    del out
    if len(failed) == len(paths):
        tmp.unlink()
        raise ValueError(f"none of the {len(paths)} images could be decoded; first error: {errors[:1]}")
    os.replace(tmp, array_path)
    summary = {
        "format": CACHE_FORMAT,
        "size": size,
        "count": len(paths),
        "failed": sorted(failed),
        "errors": errors[:100],
    }
    atomic_write_text(info_path, json.dumps(summary))
    elapsed = time.monotonic() - started
    log.info("image cache %s: %d images at %d px in %.1f s", array_path, len(paths), size, elapsed)
    if failed:
        log.warning("%d images failed to decode and are skipped, e.g. %s", len(failed), errors[:3])


def _run_jobs(jobs: list[tuple[int, str, int]], workers: int) -> Iterator[tuple[int, np.ndarray | None, str]]:
    if workers <= 1:
        yield from map(_decode_job, jobs)
        return
    with get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_decode_job, jobs, chunksize=16)
