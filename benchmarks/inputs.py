"""What the benchmarks run on: real files from ../shared/data when present, and models
exported by the project's own export path (random weights: timing does not depend on them)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
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
