"""Decode bounds (issue 15): what a codec allocates must follow from checked numbers.

Deflated DICOM is inflated with a cap derived from the pixel limit; an encapsulated
frame's own header (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ) must agree with Rows,
Columns and SamplesPerPixel and stay under the limit before any codec sees it. Every
hostile file is generated here and is small on disk.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)

from cxrmsn.errors import ERROR_CODES, DecodeError
from cxrmsn.imaging import decode
from tests.helpers import chest_like_picture, dicom_bytes, make_dataset, to_jpeg, to_png

REPO = Path(__file__).resolve().parents[2]
PICTURE = chest_like_picture(64, 64)
MIB = 1 << 20


# --- generated files ------------------------------------------------------------------


def deflated_dicom(picture: np.ndarray = PICTURE) -> bytes:
    ds = make_dataset(picture)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return dicom_bytes(ds)


def _meta_end(data: bytes) -> int:
    """Offset after the file meta group: 132 + the 12-byte group length element + its value."""
    return 144 + int.from_bytes(data[140:144], "little")


def deflated_bomb(zero_mib: int = 1024) -> bytes:
    """A valid small deflated DICOM plus a private OB element of ``zero_mib`` MiB of zeros.

    After a full flush the compressor forgets its history, so deflating the next MiB of
    zeros gives the same bytes every time: one chunk, repeated, is a valid raw deflate
    stream of any length (1 GiB of zeros is about 1 MB) built in milliseconds.
    """
    small = deflated_dicom()
    meta_end = _meta_end(small)
    body = zlib.decompress(small[meta_end:], -zlib.MAX_WBITS)
    creator = b"CXRMSN BOMB "
    private = (
        struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator))
        + creator
        + struct.pack("<HH2sHI", 0x7FE1, 0x1000, b"OB", 0, zero_mib * MIB)
    )
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(body + private) + compressor.flush(zlib.Z_FULL_FLUSH)
    chunk = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return small[:meta_end] + head + chunk * zero_mib + compressor.flush()


def encapsulated_dicom(
    frames: list[bytes], syntax: UID, *, rows: int = 64, columns: int = 64, **options: object
) -> bytes:
    ds = make_dataset(PICTURE)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = encapsulate(frames, **options)  # type: ignore[arg-type]
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def with_sof(
    jpeg: bytes, width: int, height: int, components: int | None = None, marker: int = 0xC0
) -> bytes:
    """The JPEG with its first ``marker`` frame header rewritten to declare other numbers."""
    data = bytearray(jpeg)
    sof = data.find(bytes([0xFF, marker]))
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    if components is not None:
        data[sof + 9] = components
    return bytes(data)


def j2k(picture: np.ndarray = PICTURE, *, jp2: bool = False) -> bytes:
    """A lossless JPEG 2000 codestream (or JP2 file) written by Pillow's openjpeg."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG2000", no_jp2=not jp2)
    return buffer.getvalue()


def with_siz(data: bytes, width: int, height: int, tile: int | None = None) -> bytes:
    """The JPEG 2000 data with its SIZ segment declaring another size (and tile size)."""
    patched = bytearray(data)
    siz = patched.find(b"\xff\x4f\xff\x51") + 2
    struct.pack_into(">II", patched, siz + 6, width, height)  # Xsiz, Ysiz (offsets are 0)
    if tile is not None:
        struct.pack_into(">II", patched, siz + 22, tile, tile)  # XTsiz, YTsiz
    return bytes(patched)


def _code(data: bytes) -> tuple[str, int, str]:
    with pytest.raises(DecodeError) as caught:
        decode(data)
    error = caught.value
    assert error.code in ERROR_CODES
    return error.code, error.http_status, error.detail


# --- 1. deflated DICOM ----------------------------------------------------------------


def test_a_deflated_dicom_decodes_to_the_pixels_of_its_explicit_vr_copy() -> None:
    picture = chest_like_picture(96, 80, seed=3)
    explicit = decode(dicom_bytes(make_dataset(picture)))
    deflated = decode(deflated_dicom(picture))
    np.testing.assert_array_equal(deflated.pixels, explicit.pixels)
    assert deflated.info.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert (deflated.info.modality, deflated.info.view_position) == ("DX", "PA")


def test_pydicoms_deflated_test_file_still_decodes() -> None:
    path = pydicom.data.get_testdata_file("image_dfl.dcm")
    assert path is not None
    image = decode(Path(path).read_bytes())
    assert image.pixels.shape == (512, 512)
    assert image.info.transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def test_a_deflated_stream_that_stops_early_is_corrupt_input() -> None:
    data = deflated_dicom()
    meta_end = _meta_end(data)
    code, status, _ = _code(data[: meta_end + (len(data) - meta_end) // 2])
    assert (code, status) == ("corrupt_input", 400)


def test_the_inflate_cap_follows_the_pixel_limit() -> None:
    from cxrmsn.imaging.deflate import inflated_size_cap
    from cxrmsn.imaging.types import DecodeLimits

    small, large = inflated_size_cap(DecodeLimits(max_pixels=1000)), inflated_size_cap(DecodeLimits())
    assert large - small == (40_000_000 - 1000) * 2
    with pytest.raises(DecodeError) as caught:
        decode(deflated_bomb(zero_mib=40), limits=DecodeLimits(max_pixels=4096))
    assert (caught.value.code, caught.value.http_status) == ("image_too_large", 413)


_BOMB_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from cxrmsn.errors import DecodeError
    from cxrmsn.imaging import decode
    from tests.core.test_decode_bounds import deflated_bomb

    def peak_rss_mb():
        # VmHWM is this program's own peak; ru_maxrss would carry over the forking parent's.
        try:
            with open("/proc/self/status") as status:
                line = next(line for line in status if line.startswith("VmHWM:"))
            return int(line.split()[1]) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    data = deflated_bomb()
    start = time.perf_counter()
    try:
        decode(data)
        outcome = ["decoded", 200]
    except DecodeError as error:
        outcome = [error.code, error.http_status]
    print(json.dumps({
        "outcome": outcome,
        "file_bytes": len(data),
        "seconds": time.perf_counter() - start,
        "max_rss_mb": peak_rss_mb(),
    }))
    """
)


def test_a_deflate_bomb_is_refused_before_it_is_inflated() -> None:
    """1 GiB of zeros deflated to ~1 MB: refused at the cap, peak RSS far below the 1 GiB."""
    run = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT, str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["file_bytes"] < 2 * MIB
    assert result["outcome"] == ["image_too_large", 413]
    assert result["max_rss_mb"] < 300, result


# --- 2. codestream headers ------------------------------------------------------------


def _timed_refusal(data: bytes) -> tuple[str, int, str]:
    start = time.perf_counter()
    refusal = _code(data)
    assert time.perf_counter() - start < 2.0  # refused from the header, nothing decoded
    return refusal


def test_a_jpeg_frame_declaring_20000_squared_under_rows_512_is_refused_from_its_header() -> None:
    """The issue's file: arithmetic-coded SOF9, so no scan-length bound applies (was 2 GB, 3 s)."""
    frame = with_sof(to_jpeg(PICTURE), 20000, 20000).replace(b"\xff\xc0", b"\xff\xc9", 1)
    data = encapsulated_dicom([frame], JPEGBaseline8Bit, rows=512, columns=512)
    assert len(data) < 4096
    code, status, detail = _timed_refusal(data)
    assert (code, status) == ("image_too_large", 413)
    assert "20000 x 20000" in detail


def test_a_huffman_jpeg_frame_declaring_20000_squared_is_too_large_not_truncated() -> None:
    frame = with_sof(to_jpeg(PICTURE), 20000, 20000)
    code, status, _ = _timed_refusal(encapsulated_dicom([frame], JPEGBaseline8Bit, rows=512, columns=512))
    assert (code, status) == ("image_too_large", 413)


def test_a_jpeg_frame_that_disagrees_with_rows_and_columns_is_corrupt() -> None:
    frame = with_sof(to_jpeg(PICTURE), 96, 80)
    code, status, detail = _code(encapsulated_dicom([frame], JPEGBaseline8Bit))
    assert (code, status) == ("corrupt_input", 400)
    assert "96 x 80" in detail and "64 x 64" in detail


def test_a_jpeg_frame_with_more_components_than_samples_per_pixel_is_corrupt() -> None:
    frame = with_sof(to_jpeg(PICTURE), 64, 64, components=3)
    code, status, detail = _code(encapsulated_dicom([frame], JPEGBaseline8Bit))
    assert (code, status) == ("corrupt_input", 400)
    assert "3 components" in detail


def test_a_frame_header_behind_junk_bytes_is_still_found() -> None:
    jpeg = with_sof(to_jpeg(PICTURE), 20000, 20000).replace(b"\xff\xc0", b"\xff\xc9", 1)
    sof = jpeg.find(b"\xff\xc9")
    frame = jpeg[:sof] + b"\x00\x13\x37" + jpeg[sof:]  # libjpeg skips these with a warning
    code, status, _ = _timed_refusal(encapsulated_dicom([frame], JPEGBaseline8Bit, rows=512, columns=512))
    assert (code, status) == ("image_too_large", 413)


def test_a_second_frame_header_after_the_scan_is_checked_too() -> None:
    jpeg = to_jpeg(PICTURE)
    sof = jpeg.find(b"\xff\xc0")
    length = int.from_bytes(jpeg[sof + 2 : sof + 4], "big")
    second = with_sof(jpeg[sof : sof + 2 + length], 20000, 20000)
    frame = jpeg[:-2] + second + jpeg[-2:]  # before EOI
    code, status, _ = _timed_refusal(encapsulated_dicom([frame], JPEGBaseline8Bit))
    assert (code, status) == ("image_too_large", 413)


def test_an_excess_frame_in_the_offset_table_is_checked_too() -> None:
    """pydicom decodes every frame the offset table names, even past NumberOfFrames."""
    good = to_jpeg(PICTURE)
    bomb = with_sof(good, 20000, 20000)
    data = encapsulated_dicom([good, bomb], JPEGBaseline8Bit, has_bot=True)
    code, status, _ = _timed_refusal(data)
    assert (code, status) == ("image_too_large", 413)


@pytest.mark.parametrize(
    "frame", [b"\x00\x00" + to_jpeg(PICTURE), to_jpeg(PICTURE)[:20]], ids=["no_soi", "no_sof"]
)
def test_a_jpeg_frame_without_a_readable_frame_header_is_corrupt(frame: bytes) -> None:
    code, status, _ = _code(encapsulated_dicom([frame], JPEGBaseline8Bit))
    assert (code, status) == ("corrupt_input", 400)


def test_a_jpeg_frame_flooded_with_marker_segments_is_refused_quickly() -> None:
    jpeg = to_jpeg(PICTURE)
    frame = jpeg[:2] + b"\xff\xfe\x00\x02" * 200_000 + jpeg[2:]  # empty COM segments
    code, status, detail = _timed_refusal(encapsulated_dicom([frame], JPEGBaseline8Bit))
    assert (code, status) == ("corrupt_input", 400)
    assert "marker segments" in detail


def test_a_real_jpeg_baseline_dicom_still_decodes() -> None:
    picture = chest_like_picture(128, 96, seed=5)
    jpeg = to_jpeg(picture)
    image = decode(encapsulated_dicom([jpeg], JPEGBaseline8Bit, rows=128, columns=96))
    expected = np.asarray(Image.open(io.BytesIO(jpeg)), dtype=np.float32) / 255.0
    assert image.pixels.shape == (128, 96)
    assert float(np.abs(image.pixels - expected).max()) <= 2 / 255


@pytest.mark.parametrize("jp2", [False, True], ids=["codestream", "jp2_file"])
def test_a_real_jpeg_2000_dicom_still_decodes_exactly(jp2: bool) -> None:
    picture = chest_like_picture(80, 72, seed=7)
    image = decode(encapsulated_dicom([j2k(picture, jp2=jp2)], JPEG2000Lossless, rows=80, columns=72))
    np.testing.assert_array_equal(image.pixels, picture.astype(np.float32) / np.float32(255.0))


@pytest.mark.parametrize("jp2", [False, True], ids=["codestream", "jp2_file"])
def test_a_jpeg_2000_siz_declaring_20000_squared_is_refused_from_its_header(jp2: bool) -> None:
    frame = with_siz(j2k(jp2=jp2), 20000, 20000, tile=20000)
    code, status, detail = _timed_refusal(encapsulated_dicom([frame], JPEG2000, rows=512, columns=512))
    assert (code, status) == ("image_too_large", 413)
    assert "20000 x 20000" in detail


def test_a_jpeg_2000_siz_that_disagrees_with_rows_and_columns_is_corrupt() -> None:
    frame = with_siz(j2k(), 96, 80)
    code, status, detail = _code(encapsulated_dicom([frame], JPEG2000Lossless))
    assert (code, status) == ("corrupt_input", 400)
    assert "96 x 80" in detail and "64 x 64" in detail


def test_a_jpeg_2000_tile_bomb_is_refused_from_its_header() -> None:
    """1 x 1 px tiles over 256 x 250: 64,000 tile records (~7 KB each in openjpeg) from 2 KB."""
    gradient = (np.add.outer(np.arange(256), np.arange(250)) % 256).astype(np.uint8)
    frame = with_siz(j2k(gradient), 250, 256, tile=1)
    data = encapsulated_dicom([frame], JPEG2000Lossless, rows=256, columns=250)
    code, status, detail = _timed_refusal(data)
    assert (code, status) == ("image_too_large", 413)
    assert "64,000 tiles" in detail


def test_a_jpeg_2000_frame_without_a_codestream_is_corrupt() -> None:
    code, status, _ = _code(encapsulated_dicom([b"\x00" * 64], JPEG2000Lossless))
    assert (code, status) == ("corrupt_input", 400)


def _jpeg_ls_dicom(width: int | None = None, height: int | None = None) -> bytes:
    path = pydicom.data.get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    if width is not None and height is not None:
        frame = with_sof(
            pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1), width, height, marker=0xF7
        )
        ds.PixelData = encapsulate([frame])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_jpeg_ls_still_decodes_and_its_sof55_is_checked() -> None:
    assert decode(_jpeg_ls_dicom()).pixels.shape == (64, 64)
    code, status, _ = _timed_refusal(_jpeg_ls_dicom(20000, 20000))
    assert (code, status) == ("image_too_large", 413)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_a_plain_upload_whose_header_claims_20000_squared_is_refused_from_its_header(fmt: str) -> None:
    """Already covered by the raster decoder (Pillow reads the size first); kept as a guard."""
    if fmt == "jpeg":
        data = with_sof(to_jpeg(PICTURE), 20000, 20000)
    else:
        patched = bytearray(to_png(PICTURE))
        patched[16:24] = struct.pack(">II", 20000, 20000)
        patched[29:33] = struct.pack(">I", zlib.crc32(bytes(patched[12:29])))
        data = bytes(patched)
    code, status, _ = _timed_refusal(data)
    assert (code, status) == ("image_too_large", 413)
