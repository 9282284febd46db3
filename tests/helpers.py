"""Test inputs the tests make themselves: synthetic chest-like pictures and DICOM files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"{SHARED_DATA} is absent (it ships with the project's CI, not with a clone)",
)


def chest_like_picture(height: int = 320, width: int = 288, seed: int = 0) -> np.ndarray:
    """A smooth 8-bit picture spanning 0..255: two dark 'lungs' in a bright field."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    field = 0.8 - 0.3 * ((cols - width / 2) / width) ** 2
    for centre in (0.3, 0.7):
        field -= 0.5 * np.exp(-(((cols / width - centre) / 0.12) ** 2 + ((rows / height - 0.5) / 0.25) ** 2))
    field += 0.02 * rng.standard_normal((height, width))
    field = (field - field.min()) / (field.max() - field.min())
    return np.round(field * 255).astype(np.uint8)


def to_png(pixels: np.ndarray, *, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def to_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_dataset(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    modality: str = "DX",
    implicit: bool = False,
    **elements: object,
) -> Dataset:
    """A DX data set holding ``stored`` (uint8, uint16 or int16) as native pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    ds.PixelData = stored.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: Dataset, *, preamble: bool = True, **save_options: object) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, **save_options)  # type: ignore[arg-type]
    data = buffer.getvalue()
    return data if preamble else data[132:]


def make_dicom(stored: np.ndarray, *, preamble: bool = True, **kwargs: object) -> bytes:
    return dicom_bytes(make_dataset(stored, **kwargs), preamble=preamble)  # type: ignore[arg-type]


def voi_lut_sequence(lut: np.ndarray, first_mapped: int, output_bits: int) -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [len(lut), first_mapped, output_bits]
    item.add_new((0x0028, 0x3006), "US", [int(v) for v in lut])  # LUTData
    return Sequence([item])
