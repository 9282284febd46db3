"""The image cache: core decoder + core resize, built once, skipping undecodable files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cxrmsn.imaging import decode
from cxrmsn.preprocess import PreprocessConfig, resize_and_crop
from tests.helpers import SHARED_DATA, chest_like_picture, make_dicom, requires_shared_data, to_jpeg, to_png
from training.data.cache import cache_key, load_or_build_cache


def _images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "a.png": to_png(chest_like_picture(80, 64, seed=1)),
        "b.jpg": to_jpeg(chest_like_picture(64, 96, seed=2)),
        "c.dcm": make_dicom(chest_like_picture(72, 72, seed=3).astype(np.uint16) * 16, bits_stored=12),
        "broken.png": b"\x89PNG\r\n\x1a\n not really",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def test_cache_holds_core_resized_images_and_skips_broken_ones(tmp_path: Path) -> None:
    paths = _images(tmp_path / "img")
    cache = load_or_build_cache(paths, 32, tmp_path / "cache", workers=1)
    assert cache.images.shape == (4, 32, 32) and cache.images.dtype == np.uint8
    assert cache.failed == (3,) and cache.usable.tolist() == [0, 1, 2]
    for index in (0, 1, 2):
        pixels = decode(paths[index].read_bytes()).pixels
        expected = resize_and_crop(pixels, PreprocessConfig(resize=32, crop=32)) * 255
        assert np.abs(cache.images[index].astype(np.float32) - expected).max() <= 0.5 + 1e-4


def test_cache_is_reused_and_rebuilt_when_the_images_change(tmp_path: Path) -> None:
    paths = _images(tmp_path / "img")[:3]
    first = load_or_build_cache(paths, 32, tmp_path / "cache")
    stamp = os.stat(first.path).st_mtime_ns
    again = load_or_build_cache(paths, 32, tmp_path / "cache")
    assert again.path == first.path and os.stat(again.path).st_mtime_ns == stamp
    assert cache_key(paths, 48) != cache_key(paths, 32)
    paths[0].write_bytes(to_png(chest_like_picture(90, 90, seed=9)))  # another size on disk
    assert cache_key(paths, 32) != first.path.stem


def test_parallel_build_equals_serial_build(tmp_path: Path) -> None:
    paths = _images(tmp_path / "img")
    serial = load_or_build_cache(paths, 32, tmp_path / "serial", workers=1)
    parallel = load_or_build_cache(paths, 32, tmp_path / "parallel", workers=2)
    np.testing.assert_array_equal(serial.images, parallel.images)
    assert serial.failed == parallel.failed


def test_waiting_for_another_rank_times_out_without_a_cache(tmp_path: Path) -> None:
    with pytest.raises(TimeoutError):
        load_or_build_cache(_images(tmp_path / "img"), 32, tmp_path / "cache", build=False, wait_s=0.0)


def test_nothing_decodable_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="none of the 1 images"):
        load_or_build_cache([bad], 32, tmp_path / "cache")


@requires_shared_data
def test_real_shared_images_decode(tmp_path: Path) -> None:
    paths = sorted((SHARED_DATA / "nih1000" / "images").glob("*.png"))[:4]
    paths += sorted((SHARED_DATA / "covid" / "images").glob("*.png"))[:4]
    cache = load_or_build_cache(paths, 64, tmp_path / "cache")
    assert cache.failed == () and cache.images.std() > 10
