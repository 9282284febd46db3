"""atheris fuzz target for the decoder: only typed DecodeErrors may escape.

Short run (what the tests do):   python -m tests.fuzz.fuzz_decode -runs=3000 SEEDS_DIR
Longer run (documented in docs/reliability.md):
    python -m tests.fuzz.fuzz_decode -max_total_time=3600 -rss_limit_mb=4096 CORPUS_DIR SEEDS_DIR
Seeds: python -m tests.fuzz.fuzz_decode --write-seeds SEEDS_DIR
A crash is written as crash-<sha1> in the working directory: add it to
tests/fuzz/regressions/ and it becomes a regression test (tests/fuzz/test_fuzz.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["cxrmsn", "pydicom"]):
    import cxrmsn.imaging.dicom
    import cxrmsn.imaging.raster  # noqa: F401  (imported here so that it is instrumented)
    from cxrmsn.errors import DecodeError
    from cxrmsn.imaging import DecodeLimits, decode

# Smaller than the service's limit so that mutated headers cannot exhaust memory.
LIMITS = DecodeLimits(max_pixels=4_000_000)


def check_one_input(data: bytes) -> None:
    try:
        image = decode(data, limits=LIMITS)
    except DecodeError as error:
        if not (400 <= error.http_status < 500 and error.code and error.detail):
            raise AssertionError(f"malformed DecodeError {error.code!r} {error.http_status}") from None
        return
    pixels = image.pixels
    if pixels.dtype.name != "float32" or pixels.ndim != 2:
        raise AssertionError(f"decoded image has dtype {pixels.dtype} and shape {pixels.shape}")
    if pixels.shape != (image.info.height, image.info.width):
        raise AssertionError(f"shape {pixels.shape} disagrees with info {image.info}")
    if not (0.0 <= float(pixels.min()) <= float(pixels.max()) <= 1.0):
        raise AssertionError(f"pixel range [{pixels.min()}, {pixels.max()}] outside [0, 1]")


def write_seeds(folder: Path) -> None:
    import numpy as np

    from tests.bad_inputs import bad_inputs
    from tests.helpers import chest_like_picture, make_dicom, to_jpeg, to_png

    folder.mkdir(parents=True, exist_ok=True)
    picture = chest_like_picture(40, 36)
    seeds = {
        "good.png": to_png(picture),
        "good16.png": to_png(picture.astype(np.uint16) * 257),
        "good.jpg": to_jpeg(picture),
        "good.dcm": make_dicom(picture, WindowCenter=128, WindowWidth=200),
        "mono1.dcm": make_dicom(picture, photometric="MONOCHROME1"),
        "nopreamble.dcm": make_dicom(picture, preamble=False),
    }
    for name, data, _, _ in bad_inputs():
        if len(data) < 100_000:
            seeds[f"bad_{name}"] = data
    for name, data in seeds.items():
        (folder / name).write_bytes(data)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, check_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
