"""A corpus of bad uploads with the status and error code the service must answer.

Used by the serving tests; `python -m tests.bad_inputs DIR` writes the files to DIR.
"""

from __future__ import annotations

import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from tests.helpers import (
    SHARED_DATA,
    chest_like_picture,
    dicom_bytes,
    make_dataset,
    make_dicom,
    to_jpeg,
    to_png,
)

PICTURE = chest_like_picture(64, 64)


def _pil_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("image.png", to_png(PICTURE))
    return buffer.getvalue()


def _dicom_variant(**changes: object) -> bytes:
    ds = make_dataset(PICTURE)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return dicom_bytes(ds)


def _rgb_dicom(photometric: str) -> bytes:
    ds = make_dataset(np.stack([PICTURE] * 3, axis=-1))
    ds.Rows, ds.Columns = PICTURE.shape
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, photometric
    return dicom_bytes(ds)


def _multi_frame() -> bytes:
    ds = make_dataset(np.stack([PICTURE, PICTURE]))
    ds.NumberOfFrames = 2
    return dicom_bytes(ds)


def _float_dicom() -> bytes:
    ds = make_dataset(PICTURE)
    del ds.PixelData
    ds.BitsAllocated = 32
    ds.FloatPixelData = PICTURE.astype(np.float32).tobytes()
    return dicom_bytes(ds)


def _wrong_transfer_syntax() -> bytes:
    # The file meta says RLE Lossless; the pixel data is raw. Same UID length: meta stays valid.
    data = make_dicom(PICTURE)
    return data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.5\x00", 1)


def _png_with_bad_crc() -> bytes:
    data = bytearray(to_png(PICTURE))
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF  # inside the compressed stream: CRC and zlib both fail
    return bytes(data)


def _png_zero_width() -> bytes:
    data = bytearray(to_png(PICTURE))
    data[16:20] = b"\x00\x00\x00\x00"  # IHDR width
    return bytes(data)


def _palette_dicom() -> bytes:
    return _dicom_variant(PhotometricInterpretation="PALETTE COLOR")


def _encapsulated_garbage() -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = make_dataset(PICTURE)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + b"garbage" * 40])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def _structured_report() -> bytes:
    ds = make_dataset(PICTURE, modality="SR")
    del ds.PixelData
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(ds, keyword)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    return dicom_bytes(ds)


def _empty_voi_lut() -> bytes:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.LUTDescriptor = [0, 0, 8]
    item.add_new((0x0028, 0x3006), "US", [])
    return _dicom_variant(VOILUTSequence=Sequence([item]))


# Hostile headers (issue 15). Each puts ``marker`` in the bad value so a test can check
# that no error message quotes it.


def _lut_item(descriptor: list[int] | None, vr: str, data: object) -> Dataset:
    item = Dataset()
    if descriptor is not None:
        item.LUTDescriptor = descriptor
    item.add_new((0x0028, 0x3006), vr, data)  # LUTData
    return item


def modality_lut_variant(kind: str, marker: str) -> bytes:
    """A DICOM whose Modality LUT Sequence is malformed in the way ``kind`` names.

    kinds: short_data, no_descriptor, data_as_ob, data_as_text.
    """
    from pydicom.sequence import Sequence

    items = {
        "short_data": lambda: _lut_item([4096, 0, 16], "US", [1, 2, 3]),
        "no_descriptor": lambda: _lut_item(None, "US", list(range(256))),
        "data_as_ob": lambda: _lut_item([256, 0, 16], "OB", marker.encode() * 3),
        "data_as_text": lambda: _lut_item([256, 0, 16], "LO", marker),
    }
    item = items[kind]()
    item.ModalityLUTType = "US"
    item.LUTExplanation = marker
    return _dicom_variant(ModalityLUTSequence=Sequence([item]))


def voi_lut_variant(kind: str, marker: str) -> bytes:
    """A DICOM whose VOI LUT is malformed: kinds data_as_text, sequence_as_ob."""
    from pydicom.sequence import Sequence

    ds = make_dataset(PICTURE)
    if kind == "data_as_text":
        ds.VOILUTSequence = Sequence([_lut_item([256, 0, 8], "LO", marker)])
    elif kind == "sequence_as_ob":
        ds.add_new((0x0028, 0x3010), "OB", marker.encode() * 4)
    else:
        raise ValueError(f"kind must be data_as_text or sequence_as_ob, got {kind}")
    return dicom_bytes(ds)


def dicom_with_numbers(**elements: object) -> bytes:
    """A valid DICOM with extreme numeric header values (e.g. WindowWidth=1e308)."""
    return _dicom_variant(**elements)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A 64 x 64 JPEG whose frame header claims ``width`` x ``height``: truncated scan data."""
    data = bytearray(to_jpeg(PICTURE))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def dicom_jpeg_declaring(width: int, height: int) -> bytes:
    """JPEG Baseline DICOM: Rows x Columns and the codestream claim more than the 64 x 64 data."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = make_dataset(PICTURE)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns = height, width
    ds.PixelData = encapsulate([jpeg_declaring(width, height)])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def bad_inputs() -> list[tuple[str, bytes, int, str]]:
    """(name, bytes, HTTP status, error code) for every bad upload the service must refuse.

    Status 0 means "any 4xx" and an empty code "any decoder code".
    """
    good_dicom = make_dicom(PICTURE)
    png = to_png(PICTURE)
    jpeg = to_jpeg(PICTURE)
    cases: list[tuple[str, bytes, int, str]] = [
        ("empty", b"", 400, "empty_input"),
        ("one_byte", b"\x00", 415, "unsupported_format"),
        ("text", b"This is not an X-ray.\n" * 10, 415, "unsupported_format"),
        ("html_as_dcm", b"<!DOCTYPE html><html><body>login</body></html>", 415, "unsupported_format"),
        ("gif", _pil_bytes(Image.fromarray(PICTURE), "GIF"), 415, "unsupported_format"),
        ("tiff", _pil_bytes(Image.fromarray(PICTURE), "TIFF"), 415, "unsupported_format"),
        ("zip", _zip_bytes(), 415, "unsupported_format"),
        ("dicom_multi_frame", _multi_frame(), 422, "multi_frame"),
        ("dicom_rgb", _rgb_dicom("RGB"), 422, "not_greyscale"),
        ("dicom_ybr", _rgb_dicom("YBR_FULL"), 422, "not_greyscale"),
        ("dicom_float", _float_dicom(), 422, "float_pixel_data"),
        ("dicom_no_pixels", _dicom_variant(PixelData=None), 422, "no_pixel_data"),
        ("dicom_rows_zero", _dicom_variant(Rows=0), 422, "image_too_small"),
        (
            "dicom_short_pixels",
            _dicom_variant(PixelData=PICTURE.tobytes()[:500]),
            400,
            "pixel_data_truncated",
        ),
        ("dicom_huge_header", _dicom_variant(Rows=50000, Columns=50000), 413, "image_too_large"),
        ("dicom_wrong_syntax", _wrong_transfer_syntax(), 400, "corrupt_input"),
        ("dicom_blank", make_dicom(np.full((64, 64), 9, dtype=np.uint8)), 422, "blank_image"),
        ("png_truncated", png[: len(png) // 2], 400, "corrupt_input"),
        ("jpeg_truncated", jpeg[: len(jpeg) // 2], 400, "corrupt_input"),
        ("png_bomb", _pil_bytes(Image.new("L", (9000, 9000)), "PNG", optimize=True), 413, "image_too_large"),
        ("png_1x1", to_png(np.zeros((1, 1), dtype=np.uint8)), 422, "image_too_small"),
        ("png_elongated", to_png(np.tile(PICTURE[:20], (1, 20))), 422, "bad_aspect_ratio"),
        ("png16_one_value", to_png(np.full((64, 64), 4000, dtype=np.uint16)), 422, "blank_image"),
        ("png_15px", to_png(PICTURE[:15, :15]), 422, "image_too_small"),
        ("png_tall", to_png(np.tile(PICTURE[:, :16], (6, 1))), 422, "bad_aspect_ratio"),
        ("png_bad_crc", _png_with_bad_crc(), 400, "corrupt_input"),
        ("png_zero_width", _png_zero_width(), 400, "corrupt_input"),
        ("jpeg_soi_only", b"\xff\xd8\xff\xe0\x00\x10JFIF", 400, "corrupt_input"),
        ("bmp", _pil_bytes(Image.fromarray(PICTURE), "BMP"), 415, "unsupported_format"),
        ("webp", _pil_bytes(Image.fromarray(PICTURE), "WEBP"), 415, "unsupported_format"),
        ("pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", 415, "unsupported_format"),
        ("gzip", gzip.compress(to_png(PICTURE)), 415, "unsupported_format"),
        ("json_as_dcm", b'{"PatientName": "x", "Rows": 512}', 415, "unsupported_format"),
        ("bare_jpeg2000_codestream", b"\xff\x4f\xff\x51" + b"\x00" * 60, 415, "unsupported_format"),
        ("dicm_marker_only", b"\x00" * 128 + b"DICM", 400, "corrupt_input"),
        ("dicom_palette_colour", _palette_dicom(), 422, "not_greyscale"),
        ("dicom_encapsulated_garbage", _encapsulated_garbage(), 400, "corrupt_input"),
        ("dicom_structured_report", _structured_report(), 422, "no_pixel_data"),
        ("dicom_empty_voi_lut", _empty_voi_lut(), 400, "corrupt_input"),
    ]
    for fraction in (0.02, 0.1, 0.3, 0.5, 0.75, 0.9):
        cut = good_dicom[: int(len(good_dicom) * fraction)]
        # Cut inside the header: not recognisable; later: truncated or missing pixel data.
        status, code = (415, "unsupported_format") if len(cut) < 132 else (0, "")
        cases.append((f"dicom_truncated_{int(fraction * 100)}", cut, status, code))
    corrupt = SHARED_DATA / "dicom" / "corrupt_j2k_966.dcm"
    if corrupt.is_file():
        cases.append(("dicom_corrupt_j2k", corrupt.read_bytes(), 400, "corrupt_input"))
    return cases


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, data, status, code in bad_inputs():
        (out / f"{name}.bin").write_bytes(data)
        print(f"{name:24s} {len(data):>10,d} bytes -> {status or '4xx'} {code or '(any code)'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs"))
