"""The DICOM reader on files generated here, with expected pixel values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from cxrmsn.errors import DecodeError
from cxrmsn.imaging import decode
from tests.helpers import chest_like_picture, dicom_bytes, make_dataset, make_dicom, voi_lut_sequence

PICTURE = chest_like_picture(64, 56)
REFERENCE = PICTURE.astype(np.float32) / 255.0


def decoded(data: bytes) -> np.ndarray:
    return decode(data).pixels


def test_monochrome1_and_monochrome2_of_one_picture_decode_the_same() -> None:
    mono2 = decoded(make_dicom(PICTURE, photometric="MONOCHROME2"))
    mono1 = decoded(make_dicom(255 - PICTURE, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    np.testing.assert_allclose(mono2, REFERENCE, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_bit_depths_span_the_same_picture(bits: int) -> None:
    scale = (2**bits - 1) / 255.0
    dtype = np.uint8 if bits == 8 else np.uint16
    stored = np.round(PICTURE.astype(np.float64) * scale).astype(dtype)
    image = decode(make_dicom(stored, bits_stored=bits))
    assert image.info.bits_stored == bits
    np.testing.assert_allclose(image.pixels, REFERENCE, atol=1 / 255)


def test_signed_pixels_are_read_as_signed() -> None:
    stored = (PICTURE.astype(np.int16) - 128) * 8  # -1024 .. 1016
    np.testing.assert_allclose(decoded(make_dicom(stored, bits_stored=12)), REFERENCE, atol=1e-6)


def test_rescale_slope_and_intercept_apply_before_the_window() -> None:
    stored = np.array([[0, 100, 200, 300]] * 16, dtype=np.uint16).repeat(4, axis=1)
    # Hounsfield-like values: 2 * stored - 300 -> -300, -100, 100, 300; window [-200, 200].
    image = decoded(
        make_dicom(
            stored,
            bits_stored=12,
            RescaleSlope=2,
            RescaleIntercept=-300,
            WindowCenter=0,
            WindowWidth=401,
            VOILUTFunction="LINEAR_EXACT",
        )
    )
    np.testing.assert_allclose(image[0, ::4], [0.0, 0.25062, 0.74938, 1.0], atol=1e-4)


def test_linear_window_follows_the_standard_formula() -> None:
    stored = np.tile(np.array([0, 74, 75, 100, 125, 126, 255], dtype=np.uint8), (16, 3))
    image = decoded(make_dicom(stored, WindowCenter=100, WindowWidth=51))
    # PS3.3 C.11.2.1.2.1: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1].
    expected = np.clip((np.array([0, 74, 75, 100, 125, 126, 255]) - 99.5) / 50 + 0.5, 0, 1)
    np.testing.assert_allclose(image[0, :7], expected, atol=1e-6)


def test_first_of_several_windows_is_used() -> None:
    stored = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    one = decoded(make_dicom(stored, WindowCenter=128, WindowWidth=128))
    two = decoded(make_dicom(stored, WindowCenter=[128, 40], WindowWidth=[128, 80]))
    np.testing.assert_array_equal(one, two)


def test_voi_lut_sequence_is_preferred_over_the_window() -> None:
    stored = np.tile(np.arange(0, 1024, 16, dtype=np.uint16), (16, 1))
    lut = np.round(np.sqrt(np.arange(1024) / 1023) * 255).astype(np.uint16)
    data = make_dicom(
        stored,
        bits_stored=10,
        VOILUTSequence=voi_lut_sequence(lut, 0, 8),
        WindowCenter=10,
        WindowWidth=5,
    )
    np.testing.assert_allclose(decoded(data)[0], lut[stored[0]] / 255.0, atol=1e-6)


def test_without_window_12_bit_data_is_scaled_by_its_range_with_a_warning() -> None:
    stored = (PICTURE.astype(np.uint16) * 4 + 1000).astype(np.uint16)  # 1000 .. 2020
    image = decode(make_dicom(stored, bits_stored=12))
    np.testing.assert_allclose(image.pixels, REFERENCE, atol=1e-6)
    assert any("no VOI LUT or window" in w for w in image.info.warnings)


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("preamble", [True, False])
def test_explicit_implicit_vr_with_and_without_preamble(implicit: bool, preamble: bool) -> None:
    data = make_dicom(PICTURE, implicit=implicit, preamble=preamble)
    assert (data[128:132] == b"DICM") is preamble
    np.testing.assert_allclose(decoded(data), REFERENCE, atol=1e-6)


def test_bare_data_set_without_file_meta_decodes() -> None:
    import io

    ds = make_dataset(PICTURE)
    del ds.file_meta
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)
    np.testing.assert_allclose(decoded(buffer.getvalue()), REFERENCE, atol=1e-6)


def test_metadata_keeps_uids_and_never_patient_identifiers() -> None:
    ds = make_dataset(PICTURE, PatientName="MARKER^SECRET", PatientID="MARKER-ID", AccessionNumber="MARKER")
    image = decode(dicom_bytes(ds))
    assert image.info.sop_instance_uid == ds.SOPInstanceUID
    assert image.info.study_instance_uid == ds.StudyInstanceUID
    assert image.info.view_position == "PA" and image.info.modality == "DX"
    assert "MARKER" not in repr(image.info.to_dict())


def test_non_radiograph_modality_warns_but_decodes() -> None:
    image = decode(make_dicom(PICTURE, modality="CT"))
    assert image.info.warnings and "Modality is CT" in image.info.warnings[0]


def _rgb_dataset() -> Dataset:
    ds = make_dataset(np.stack([PICTURE] * 3, axis=-1))
    ds.Rows, ds.Columns = PICTURE.shape
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "RGB"
    return ds


def _multi_frame_dataset() -> Dataset:
    ds = make_dataset(np.stack([PICTURE, PICTURE]))
    ds.NumberOfFrames = 2
    return ds


def _no_pixel_dataset() -> Dataset:
    ds = make_dataset(PICTURE)
    del ds.PixelData
    return ds


def _short_pixel_dataset() -> Dataset:
    ds = make_dataset(PICTURE)
    ds.PixelData = PICTURE.tobytes()[:100]
    return ds


def _huge_header_dataset() -> Dataset:
    ds = make_dataset(PICTURE)
    ds.Rows, ds.Columns = 60000, 60000
    return ds


def _zero_rows_dataset() -> Dataset:
    ds = make_dataset(PICTURE)
    ds.Rows = 0
    return ds


def _blank_dataset() -> Dataset:
    return make_dataset(np.full((32, 32), 7, dtype=np.uint8))


@pytest.mark.parametrize(
    ("build", "code", "status"),
    [
        (_multi_frame_dataset, "multi_frame", 422),
        (_rgb_dataset, "not_greyscale", 422),
        (_no_pixel_dataset, "no_pixel_data", 422),
        (_short_pixel_dataset, "pixel_data_truncated", 400),
        (_huge_header_dataset, "image_too_large", 413),
        (_zero_rows_dataset, "image_too_small", 422),
        (_blank_dataset, "blank_image", 422),
    ],
)
def test_rejections_have_their_own_codes(build: Callable[[], Dataset], code: str, status: int) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(dicom_bytes(build()))
    assert caught.value.code == code
    assert caught.value.http_status == status


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.3, 0.6, 0.9, 0.999])
def test_truncated_files_raise_typed_errors(fraction: float) -> None:
    data = make_dicom(PICTURE)
    with pytest.raises(DecodeError) as caught:
        decode(data[: int(len(data) * fraction)])
    assert 400 <= caught.value.http_status < 500


def test_unknown_transfer_syntax_is_unsupported() -> None:
    ds = make_dataset(PICTURE)
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5")
    with pytest.raises(DecodeError) as caught:
        decode(dicom_bytes(ds, implicit_vr=False, little_endian=True))
    assert caught.value.code == "unsupported_transfer_syntax"
    assert caught.value.http_status == 415
