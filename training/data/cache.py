"""A cache of decoded, resized images: one uint8 [N, S, S] ``.npy`` file, memory-mapped.

Each image is decoded once with the core decoder (``cxrmsn.imaging.decode``), brought to an
S x S square in one of two layouts, and stored as 8 bits (MIMIC-CXR-JPG, CheXpert and NIH
are 8-bit sources):

- ``whole`` (pretraining): the whole film, its longer side resized to S (bilinear), centred on
  a black S x S square. ``boxes`` gives each image's (top, left, height, width) inside the
  square, so the MSN views crop from the film itself, as the paper's random resized crops of
  whole images did; the top and bottom of a portrait film are kept.
- ``crop`` (the inference view at S px: the monitor's probe, fine-tuning epochs): the core's
  ``resize_and_crop`` (shorter side to S, centre crop); its box is the whole square.

Epochs then read the memory map, which DataLoader workers and DDP ranks on one machine share
through the page cache. The file name is a hash of the format, the layout, S, the image paths
and their sizes, so a changed image list (or a cache of the older centre-crop-only format) is
never reused. Images that fail to decode are recorded (``failed``) and skipped. The cache is
written to temporary names and renamed when complete; the ``.json`` summary comes last, so a
killed build leaves no half cache behind.
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
from PIL import Image

from cxrmsn.errors import DecodeError
from cxrmsn.fileio import atomic_write_text
from cxrmsn.imaging import decode
from cxrmsn.preprocess import PreprocessConfig, resize_and_crop
from training.distributed import wait_for_file

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # 1: every image centre-cropped to the square (no layouts, no boxes)
LAYOUTS = ("whole", "crop")
Box = tuple[int, int, int, int]  # top, left, height, width of the image inside its square


@dataclass(frozen=True)
class ImageCache:
    images: np.ndarray  # uint8 [N, S, S], memory-mapped
    boxes: np.ndarray  # int32 [N, 4]: (top, left, height, width) of each image in its square
    failed: tuple[int, ...]  # indices (into the path list) that could not be decoded
    path: Path

    @property
    def usable(self) -> np.ndarray:
        """Indices of the images that decoded."""
        keep = np.ones(len(self.images), dtype=bool)
        keep[list(self.failed)] = False
        return np.flatnonzero(keep)


def cache_key(paths: Sequence[Path], size: int, layout: str = "crop") -> str:
    digest = hashlib.sha256(f"cxr-msn image cache v{CACHE_FORMAT} size={size} layout={layout}\n".encode())
    for path in paths:
        stat_size = path.stat().st_size if path.exists() else -1
        digest.update(f"{path.resolve()}\t{stat_size}\n".encode())
    return digest.hexdigest()[:24]


def load_or_build_cache(
    paths: Sequence[Path],
    size: int,
    cache_dir: Path,
    *,
    layout: str = "crop",
    workers: int = 1,
    build: bool = True,
    wait_s: float = 0,
) -> ImageCache:
    """The cache for ``paths`` at ``size`` in ``layout``; built when absent and ``build``, else waited for.

    Under DDP rank 0 builds (``build=True``) while the other ranks wait up to ``wait_s``
    seconds for the finished file: polling, so a long build cannot time out a collective.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    key = cache_key(paths, size, layout)
    array_path, info_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    boxes_path = cache_dir / f"{key}.boxes.npy"
    if not info_path.is_file() and build:
        _build(paths, size, layout, array_path, boxes_path, info_path, workers=workers)
    wait_for_file(info_path, timeout_s=wait_s, what="the image cache")
    info = json.loads(info_path.read_text())
    return ImageCache(
        np.load(array_path, mmap_mode="r"), np.load(boxes_path), tuple(info["failed"]), array_path
    )


def decode_resized(path: Path, size: int, layout: str = "crop") -> tuple[np.ndarray, Box]:
    """One image file -> uint8 [size, size] in ``layout`` and the image's box in it."""
    pixels = decode(path.read_bytes()).pixels
    if layout == "crop":
        grey, box = resize_and_crop(pixels, PreprocessConfig(resize=size, crop=size)), (0, 0, size, size)
    else:
        grey, box = fit_in_square(pixels, size)
    return np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8), box


def fit_in_square(pixels: np.ndarray, size: int) -> tuple[np.ndarray, Box]:
    """Grey float32 [H, W] -> [size, size]: longer side to ``size`` (bilinear, antialiased when
    shrinking, as the core's resize), centred on black; and the image's box."""
    height, width = pixels.shape
    scale = size / max(height, width)
    new_height = min(size, max(1, round(height * scale)))
    new_width = min(size, max(1, round(width * scale)))
    grey = np.ascontiguousarray(pixels, dtype=np.float32)
    if (new_height, new_width) != (height, width):
        resized = Image.fromarray(grey, mode="F").resize((new_width, new_height), Image.Resampling.BILINEAR)
        grey = np.asarray(resized, dtype=np.float32)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    square = np.zeros((size, size), dtype=np.float32)
    square[top : top + new_height, left : left + new_width] = grey
    return square, (top, left, new_height, new_width)


def _decode_job(job: tuple[int, str, int, str]) -> tuple[int, np.ndarray | None, Box, str]:
    index, path, size, layout = job
    try:
        image, box = decode_resized(Path(path), size, layout)
        return index, image, box, ""
    except (DecodeError, OSError) as exc:
        return index, None, (0, 0, 0, 0), f"{path}: {exc}"


def _build(
    paths: Sequence[Path],
    size: int,
    layout: str,
    array_path: Path,
    boxes_path: Path,
    info_path: Path,
    *,
    workers: int,
) -> None:
    array_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = array_path.with_name(f".{array_path.stem}.{os.getpid()}.tmp.npy")
    started = time.monotonic()
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
    boxes = np.zeros((len(paths), 4), dtype=np.int32)
    jobs = [(i, str(p), size, layout) for i, p in enumerate(paths)]
    failed: list[int] = []
    errors: list[str] = []
    for index, image, box, error in _run_jobs(jobs, workers):
        if image is None:
            failed.append(index)
            errors.append(error)
        else:
            out[index] = image
            boxes[index] = box
    out.flush()
    del out
    if len(failed) == len(paths):
        tmp.unlink()
        raise ValueError(f"none of the {len(paths)} images could be decoded; first error: {errors[:1]}")
    os.replace(tmp, array_path)
    tmp_boxes = boxes_path.with_name(f".{boxes_path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp_boxes, boxes)
    os.replace(tmp_boxes, boxes_path)
    summary = {
        "format": CACHE_FORMAT,
        "size": size,
        "layout": layout,
        "count": len(paths),
        "failed": sorted(failed),
        "errors": errors[:100],
    }
    atomic_write_text(info_path, json.dumps(summary))
    elapsed = time.monotonic() - started
    log.info(
        "image cache %s: %d images at %d px (%s) in %.1f s", array_path, len(paths), size, layout, elapsed
    )
    if failed:
        log.warning("%d images failed to decode and are skipped, e.g. %s", len(failed), errors[:3])


def _run_jobs(
    jobs: list[tuple[int, str, int, str]], workers: int
) -> Iterator[tuple[int, np.ndarray | None, Box, str]]:
    if workers <= 1:
        yield from map(_decode_job, jobs)
        return
    with get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_decode_job, jobs, chunksize=16)
