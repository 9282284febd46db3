"""What the benchmarks run on: real files from ../shared/data when present, and models
exported by the project's own export path (random weights: timing does not depend on them)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from training.data_root import shared_data_root

SHARED_DATA = shared_data_root()  # $CXR_MSN_DATA_ROOT, else ../shared/data beside the checkout
NHSX_DICOM = "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"


def benchmark_files(count: int = 16) -> dict[str, list[bytes]]:
    """PNG (512 px chest X-rays), uncompressed DICOM (1024 px) and JPEG 2000 DICOM (2000 px)."""
    pngs = sorted((SHARED_DATA / "png").glob("*.png")) + sorted(
        (SHARED_DATA / "covid" / "images").glob("*.png")
    )
    png = [path.read_bytes() for path in pngs[:count]] or [_generated_png(seed) for seed in range(count)]
    png = (png * count)[:count]
    dicom = SHARED_DATA / "dicom" / NHSX_DICOM
    j2k = SHARED_DATA / "dicom" / "966_fixed.dcm"
    return {
        "png": png,
        "dicom uncompressed": [dicom.read_bytes() if dicom.is_file() else _generated_dicom()] * 4,
        "dicom jpeg2000": [j2k.read_bytes() if j2k.is_file() else _pydicom_data_j2k()] * 2,
    }


def _generated_png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((512, 512)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _generated_dicom() -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", 1024, 1024, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = (np.random.default_rng(0).random((1024, 1024)) * 255).astype(np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _pydicom_data_j2k() -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_J2KR.dcm", download=False)
    if path is None:
        raise RuntimeError("no JPEG 2000 DICOM: ../shared/data is absent and pydicom-data is not installed")
    return Path(path).read_bytes()


def preprocessed_batch(files: list[bytes], size: int) -> np.ndarray:
    from cxrmsn.imaging import decode
    from cxrmsn.preprocess import preprocess

    return np.stack([preprocess(decode(files[i % len(files)]).pixels) for i in range(size)])


def export_random_model(architecture: str, repository: Path) -> Path:
    """A randomly initialised classifier, exported with fp32, fp16 and int8 variants."""
    import torch

    from cxrmsn.checkpoint import CheckpointMetadata, save_checkpoint
    from cxrmsn.model import CXRClassifier
    from export.build import ExportOptions, export_repository

    torch.manual_seed(0)
    checkpoint = repository.parent / f"{architecture}.safetensors"
    repository.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        checkpoint, CXRClassifier(architecture).state_dict(), CheckpointMetadata(architecture=architecture)
    )
    export_repository(
        checkpoint, repository, ExportOptions(variants=("fp32", "fp16", "int8"), ort_optimised="never")
    )
    return repository


#: Rows x columns of the generated radiographs: a 35 x 43 cm detector at about 0.17 mm.
LARGE_SHAPE = (2500, 2048)


def large_radiograph(bits: int, seed: int = 0) -> np.ndarray:
    """A 2048 x 2500 chest-like picture as ``bits``-bit unsigned integers.

    Smooth anatomy (a bright field, two dark lungs, a mediastinum), collimator borders, a
    bright marker and 1.5 % pixel noise: about as hard to compress as a real radiograph
    (lossless JPEG 2000: the 2000 x 2128 12-bit DX of ../shared/data takes 7.7 bits per
    pixel, this 6.9).
    """
    rows, cols = LARGE_SHAPE
    y = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, cols, dtype=np.float32)[None, :]
    field = 0.8 - 0.3 * (x - 0.5) ** 2 + 0.05 * y
    for centre in (0.3, 0.7):
        field = field - 0.45 * np.exp(-(((x - centre) / 0.13) ** 2 + ((y - 0.5) / 0.27) ** 2))
    field = field + 0.1 * np.exp(-(((x - 0.5) / 0.06) ** 2))
    field = field + 0.015 * np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
    field[: rows // 20], field[-rows // 20 :] = 0.05, 0.05
    field[:, : cols // 20], field[:, -cols // 20 :] = 0.05, 0.05
    field[rows // 10 : rows // 10 + 60, cols // 10 : cols // 10 + 40] = 1.0
    top = 2**bits - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.clip(np.rint(field * top), 0, top).astype(dtype)


def large_files() -> dict[str, bytes]:
    """The generated 2048 x 2500 radiograph as a 12-bit lossless JPEG 2000 DICOM (encoded by
    pylibjpeg-openjpeg, OpenJPEG's defaults: 5 wavelet levels, as PACS encoders write), an
    8-bit JPEG Baseline DICOM (libjpeg quality 90) and an 8-bit PNG."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    twelve, eight = large_radiograph(12), large_radiograph(8)
    j2k = _dicom_dataset(twelve, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    j2k.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    jpeg = _dicom_dataset(eight, bits_stored=8)
    buffer = io.BytesIO()
    Image.fromarray(eight).save(buffer, format="JPEG", quality=90)
    jpeg.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    jpeg.PixelData = encapsulate([buffer.getvalue()])
    jpeg["PixelData"].VR = "OB"
    png = io.BytesIO()
    Image.fromarray(eight).save(png, format="PNG")
    return {
        "jpeg2000 lossless 12-bit": _dicom_bytes(j2k),
        "jpeg baseline 8-bit": _dicom_bytes(jpeg),
        "png 8-bit": png.getvalue(),
    }


def _dicom_dataset(pixels: np.ndarray, *, bits_stored: int, **elements: object) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # DX For Presentation
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "DX", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = pixels.dtype.itemsize * 8, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _dicom_bytes(ds: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
