"""Real chest radiographs: ../shared/data (when present) and pydicom-data's chest CR."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from cxrmsn.errors import DecodeError
from cxrmsn.imaging import decode
from cxrmsn.preprocess import resize_and_crop
from tests.helpers import SHARED_DATA, requires_shared_data


def _manifest_rows() -> list[dict[str, str]]:
    path = SHARED_DATA / "dicom" / "manifest.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@requires_shared_data
@pytest.mark.parametrize("row", _manifest_rows(), ids=lambda row: row["file"][:40])
def test_shared_dicom_files_behave_as_their_manifest_says(row: dict[str, str]) -> None:
    data = (SHARED_DATA / "dicom" / row["file"]).read_bytes()
    if row["expected_to_decode"] == "no":
        with pytest.raises(DecodeError) as caught:
            decode(data)
        assert caught.value.http_status == 400
        return
    image = decode(data)
    assert (image.info.height, image.info.width) == (int(row["rows"]), int(row["cols"]))
    assert image.info.modality == row["modality"]
    assert image.info.photometric == row["photometric"]
    assert image.info.transfer_syntax_uid == row["transfer_syntax_uid"]
    assert image.info.bits_stored == int(row["bits_stored"])
    assert image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() < image.pixels.max() <= 1.0


@requires_shared_data
def test_mislabelled_monochrome1_file_decodes_as_the_negative_of_its_twin() -> None:
    folder = SHARED_DATA / "dicom"
    mono2 = decode((folder / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm").read_bytes())
    mono1 = decode((folder / "Fake_MONOHR1.dcm").read_bytes())
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)


@requires_shared_data
def test_nhsx_dicom_is_the_same_picture_as_its_nih_png() -> None:
    nhsx = "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"
    dicom = decode((SHARED_DATA / "dicom" / nhsx).read_bytes())
    png = decode((SHARED_DATA / "nih1000" / "images" / "00000002_000.png").read_bytes())
    small = resize_and_crop(dicom.pixels)
    reference = resize_and_crop(png.pixels)
    # The PNG is a 64 px copy: compare at model resolution, as a correlation.
    assert np.corrcoef(small.ravel(), reference.ravel())[0, 1] > 0.95


@requires_shared_data
@pytest.mark.parametrize("name", ["00000001_000.png", "00027426_000.png"])
def test_shared_pngs_decode(name: str) -> None:
    image = decode((SHARED_DATA / "png" / name).read_bytes())
    assert (image.info.width, image.info.height) == (512, 512)
    assert image.info.photometric == "MONOCHROME2"


# pydicom-data's pairs: J2KR is the lossless encoding of UNCR; J2KI is lossy and UNCI is
# its decoded pixels stored uncompressed. Reference: UNCR (uncompressed, explicit VR).
RG1_ENCODINGS = {
    "RG1_UNCR.dcm": ("RG1_UNCR.dcm", 0.0),
    "RG1_J2KR.dcm": ("RG1_UNCR.dcm", 0.0),
    "RG1_UNCI.dcm": ("RG1_J2KI.dcm", 0.0),
    "RG1_J2KI.dcm": ("RG1_UNCR.dcm", 0.02),  # lossy: bounded difference from the original
}


def _decode_testdata(name: str) -> np.ndarray:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    with open(path, "rb") as handle:
        image = decode(handle.read())
    assert image.info.photometric == "MONOCHROME1" and image.info.bits_stored == 15
    return image.pixels


@pytest.mark.parametrize("name", sorted(RG1_ENCODINGS))
def test_pydicom_data_chest_cr_decodes_to_the_same_picture_in_every_encoding(name: str) -> None:
    reference_name, tolerance = RG1_ENCODINGS[name]
    pixels = _decode_testdata(name)
    reference = _decode_testdata(reference_name)
    assert pixels.shape == reference.shape == (1955, 1841)
    if tolerance == 0.0:
        np.testing.assert_array_equal(pixels, reference)
    else:
        difference = np.abs(pixels - reference)
        assert difference.max() < tolerance and difference.mean() < tolerance / 5
    original = _decode_testdata("RG1_UNCR.dcm")
    assert np.abs(pixels - original).max() < 0.02


def test_pydicom_data_chest_cr_is_windowed_and_inverted() -> None:
    pixels = _decode_testdata("RG1_UNCR.dcm")
    # MONOCHROME1 windowed at c 15000 / w 30000 then inverted: a full, mid-grey radiograph.
    assert 0.2 < float(pixels.mean()) < 0.8
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    assert float(np.percentile(pixels, 99) - np.percentile(pixels, 1)) > 0.3
