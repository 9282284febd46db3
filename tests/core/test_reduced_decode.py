"""Reduced-resolution decoding (issue 18): decode no more pixels than the model input needs.

``decode(data, min_size=N)`` decodes JPEG 2000 (wavelet levels discarded) and 8-bit JPEG
(DCT scaling) at the smallest resolution whose shorter side is still >= N, and every
other syntax at full resolution. Checked here, on generated files of each syntax, on
pydicom's and pydicom-data's files and on the real chest DICOMs of ../shared/data:

- the reduced path is taken (``info.decode_reduction`` > 1) where it should be, and not
  where it cannot be (the result is then the full decode's, exactly);
- the model input (after ``cxrmsn.preprocess``) from the reduced path is within
  ``MAX_DIFFERENCE`` / ``MEAN_DIFFERENCE`` of the full path's;
- the codestream header checks still run first, and broken files fail as they did.

Callers ask for ``PreprocessConfig.decode_min_side()``: twice the resize target
(``DECODE_OVERSAMPLING``), so the preprocessing's own antialiasing still shrinks the reduced
image by 2x or more. Tolerances are in model-input units (ImageNet-normalised: 1.0 is about
0.22 of the grey range). What differs is the low-pass filter, not the pixels' meaning: the
full path shrinks with Pillow's antialiased bilinear filter, the reduced path first with the
codec's own (the wavelet's low band; DCT block means) and then with Pillow's. The filters
agree on smooth regions and differ at sharp edges (collimator borders, markers) and on pixel
noise. Measured over the files below, 224 px and 64 px models (max / mean):

- real chest radiographs (pydicom-data RG1, RG3 lossless and lossy; ../shared/data 966
  JPEG 2000 DX and the SIIM JPEG CRs): at most 0.142 / 0.0064;
- generated radiographs (2 % pixel noise, hard collimator borders, a marker): at most
  0.159 / 0.0173;
- an MR slice (MR2, sharp edges on black; the worst case): at most 0.234 / 0.0207.

The bounds below leave about 1.4x margin over those figures. Decoding at exactly the resize
target instead (``min_size=resize``, 2x faster again) measured 0.44 / 0.011, 0.75 / 0.031
and 1.47 / 0.040.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from cxrmsn.errors import DecodeError
from cxrmsn.imaging import DecodeLimits, decode, reduced
from cxrmsn.imaging.codestream import J2KCoding, j2k_coding
from cxrmsn.preprocess import PreprocessConfig, preprocess
from tests.helpers import (
    SHARED_DATA,
    chest_like_picture,
    dicom_bytes,
    make_dataset,
    to_jpeg,
    to_png,
    voi_lut_sequence,
)

# Model-input parity bounds, (max, mean): see the module docstring for the measurements.
REAL_CHEST = (0.2, 0.009)
GENERATED_CHEST = (0.22, 0.024)
ANY_IMAGE = (0.33, 0.029)

MODEL_224 = PreprocessConfig()
MODEL_64 = PreprocessConfig(resize=64, crop=64)  # the bundled model's
CONFIGS = [MODEL_224, MODEL_64]


def _ids(config: PreprocessConfig) -> str:
    return f"{config.resize}px"


# --- generated inputs ------------------------------------------------------------------


def radiograph(height: int, width: int, bits: int, seed: int = 0) -> np.ndarray:
    """A chest-like picture with what makes real ones hard: sharp collimator borders and a
    bright marker, on 2 % noise, as ``bits``-bit unsigned integers."""
    picture = chest_like_picture(height, width, seed).astype(np.float64) / 255.0
    border_y, border_x = height // 16, width // 16
    picture[:border_y] *= 0.15
    picture[-border_y:] *= 0.15
    picture[:, :border_x] *= 0.15
    picture[:, -border_x:] *= 0.15
    picture[2 * border_y : 3 * border_y, 2 * border_x : 2 * border_x + width // 20] = 1.0  # marker
    top = 2**bits - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.clip(np.rint(picture * top), 0, top).astype(dtype)


def compressed(ds: Dataset, syntax: UID, **options: object) -> bytes:
    """``ds`` compressed by pydicom's encoders (pylibjpeg-openjpeg for JPEG 2000)."""
    plugin = "pylibjpeg" if syntax in (JPEG2000Lossless, JPEG2000) else ""
    ds.compress(syntax, encoding_plugin=plugin, **options)  # type: ignore[arg-type]
    return dicom_bytes(ds)


def encapsulated(ds: Dataset, frame: bytes, syntax: UID) -> bytes:
    """``ds`` with ``frame`` (a codestream written by Pillow) as its encapsulated pixel data."""
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def pillow_j2k(pixels: np.ndarray, *, lossy: bool = False) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, object] = {"irreversible": True, "quality_layers": [20]} if lossy else {}
    Image.fromarray(pixels).save(buffer, format="JPEG2000", no_jp2=True, **options)
    return buffer.getvalue()


def j2k12(**elements: object) -> bytes:
    """1200 x 1000, 12-bit, lossless JPEG 2000 (pylibjpeg-openjpeg), with ``elements``."""
    stored = radiograph(1200, 1000, 12)
    ds = make_dataset(stored, bits_stored=12, **elements)  # type: ignore[arg-type]
    return compressed(ds, JPEG2000Lossless)


def j2k_signed() -> bytes:
    """Signed 16-bit lossless JPEG 2000 with a rescale and a window (CT-like numbers)."""
    stored = (radiograph(1100, 900, 12, seed=2).astype(np.int32) - 2048).astype(np.int16)
    ds = make_dataset(stored, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=-1000, WindowWidth=3000)
    return compressed(ds, JPEG2000Lossless)


def j2k_pillow(bits: int, *, lossy: bool = False) -> bytes:
    """Pillow-written JPEG 2000 (8-bit: mode L; otherwise I;16, so 16-bit precision)."""
    stored = radiograph(1000, 1100, 8 if bits == 8 else 12, seed=3)
    stored = stored if bits == 8 else stored.astype(np.uint16)
    ds = make_dataset(stored, bits_stored=bits)
    if bits != 8:
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    syntax = JPEG2000 if lossy else JPEG2000Lossless
    return encapsulated(ds, pillow_j2k(stored, lossy=lossy), syntax)


def jpeg_dicom(photometric: str = "MONOCHROME2", **elements: object) -> bytes:
    """1000 x 1200 8-bit JPEG Baseline (Pillow, quality 90) in DICOM."""
    stored = radiograph(1000, 1200, 8, seed=4)
    ds = make_dataset(stored, photometric=photometric, **elements)  # type: ignore[arg-type]
    return encapsulated(ds, to_jpeg(stored, quality=90), JPEGBaseline8Bit)


def voi_lut_12bit() -> Sequence:
    """A gamma-like 4096-entry VOI LUT with 16-bit output."""
    return voi_lut_sequence((np.linspace(0.0, 1.0, 4096) ** 0.7 * 65535).astype(np.uint16), 0, 16)


GENERATED = {
    "j2k 12-bit lossless, window": lambda: j2k12(WindowCenter=2048, WindowWidth=4096),
    "j2k 12-bit MONOCHROME1, rescale, window": lambda: j2k12(
        photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100, WindowCenter=3000, WindowWidth=6000
    ),
    "j2k 12-bit VOI LUT": lambda: j2k12(VOILUTSequence=voi_lut_12bit()),
    "j2k 12-bit sigmoid window": lambda: j2k12(WindowCenter=2000, WindowWidth=2500, VOILUTFunction="SIGMOID"),
    "j2k signed 16-bit, rescale, window": j2k_signed,
    "j2k Pillow 8-bit lossless": lambda: j2k_pillow(8),
    "j2k Pillow 16-bit lossless": lambda: j2k_pillow(16),
    "j2k Pillow 16-bit lossy (4.91)": lambda: j2k_pillow(16, lossy=True),
    "jpeg baseline MONOCHROME2": jpeg_dicom,
    "jpeg baseline MONOCHROME1 window": lambda: jpeg_dicom("MONOCHROME1", WindowCenter=120, WindowWidth=200),
}
_CACHE: dict[str, bytes] = {}


def generated(name: str) -> bytes:
    if name not in _CACHE:
        _CACHE[name] = GENERATED[name]()
    return _CACHE[name]


# --- helpers ---------------------------------------------------------------------------


def model_inputs(data: bytes, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(full path's model input, reduced path's, reduction factor), checking the info."""
    full = decode(data)
    small = decode(data, min_size=config.decode_min_side())
    assert (small.info.width, small.info.height) == (full.info.width, full.info.height)
    assert full.info.decode_reduction == 1 and full.extent is None
    factor = small.info.decode_reduction
    if factor == 1:
        assert small.extent is None
        np.testing.assert_array_equal(small.pixels, full.pixels)
    else:
        expected = (-(-full.info.height // factor), -(-full.info.width // factor))
        assert small.pixels.shape == expected
        assert min(small.pixels.shape) >= config.decode_min_side()
    return preprocess(full.pixels, config), preprocess(small.pixels, config, extent=small.extent), factor


def assert_close(full: np.ndarray, small: np.ndarray, bounds: tuple[float, float]) -> None:
    max_bound, mean_bound = bounds
    difference = np.abs(full.astype(np.float64) - small)
    assert full.shape == small.shape
    assert float(difference.max()) <= max_bound, f"max difference {difference.max():.4f}"
    assert float(difference.mean()) <= mean_bound, f"mean difference {difference.mean():.5f}"


def expected_factor(width: int, height: int, config: PreprocessConfig, most: int) -> int:
    """The largest power of 2 (up to ``most``) that keeps the shorter side >= decode_min_side."""
    factor = most
    while factor > 1 and min(-(-width // factor), -(-height // factor)) < config.decode_min_side():
        factor //= 2
    return factor


# --- the choice of reduction -------------------------------------------------------------


def test_decode_min_side_is_twice_the_resize_target() -> None:
    assert PreprocessConfig(resize=256, crop=224).decode_min_side() == 512
    assert MODEL_64.decode_min_side() == 128


@pytest.mark.parametrize(
    ("width", "height", "target", "levels"),
    [
        (2048, 2500, 224, 3),
        (2048, 2500, 64, 5),
        (2048, 2500, 2048, 0),
        (2000, 2128, 224, 3),
        (300, 300, 224, 0),
    ],
)
def test_j2k_levels_are_the_most_that_keep_the_target(
    width: int, height: int, target: int, levels: int
) -> None:
    coding = J2KCoding(precision=12, signed=False, x_offset=0, y_offset=0, levels=5)
    assert reduced.j2k_levels(width, height, target, coding) == levels


def test_j2k_levels_stop_at_the_codestreams_levels_and_image_offsets() -> None:
    few = J2KCoding(precision=12, signed=False, x_offset=0, y_offset=0, levels=2)
    assert reduced.j2k_levels(4096, 4096, 64, few) == 2
    offset = J2KCoding(precision=12, signed=False, x_offset=1, y_offset=0, levels=5)
    assert reduced.j2k_levels(4096, 4096, 64, offset) == 0


@pytest.mark.parametrize(
    ("width", "height", "target", "factor"),
    [(1024, 1024, 224, 4), (1024, 1024, 64, 8), (1024, 1024, 513, 1), (1001, 803, 200, 4)],
)
def test_jpeg_factor_is_the_largest_that_keeps_the_target(
    width: int, height: int, target: int, factor: int
) -> None:
    assert reduced.jpeg_factor(width, height, target) == factor


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "224"])
def test_min_size_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="min_size"):
        decode(to_png(chest_like_picture(64, 64)), min_size=bad)  # type: ignore[arg-type]


def test_min_size_never_goes_below_the_size_limit() -> None:
    assert reduced.target_side(4, DecodeLimits(min_side=16)) == 16
    assert reduced.target_side(None, DecodeLimits()) is None


# --- generated files: parity and the path taken ------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
@pytest.mark.parametrize("name", list(GENERATED))
def test_generated_files_decode_reduced_within_tolerance(name: str, config: PreprocessConfig) -> None:
    data = generated(name)
    full, small, factor = model_inputs(data, config)
    info = decode(data).info
    most = 8 if name.startswith("jpeg") else 32
    assert factor == expected_factor(info.width, info.height, config, most) > 1
    assert_close(full, small, GENERATED_CHEST)


def test_a_2048_by_2500_12bit_j2k_decodes_at_a_quarter_for_a_224px_model() -> None:
    stored = radiograph(2500, 2048, 12, seed=9)
    data = compressed(
        make_dataset(stored, bits_stored=12, WindowCenter=2048, WindowWidth=4096), JPEG2000Lossless
    )
    image = decode(data, min_size=MODEL_224.decode_min_side())
    assert image.info.decode_reduction == 4  # 512 x 625 >= 448; 1/8 would be 256 x 313
    assert image.pixels.shape == (625, 512)
    assert (image.info.width, image.info.height) == (2048, 2500)
    assert image.info.to_dict()["decode_reduction"] == 4
    assert image.extent == pytest.approx((0.375, 0.375, 512.375, 625.375))
    assert decode(data, min_size=64).info.decode_reduction == 32  # 64 x 79: a 5-level codestream


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_jpeg_uploads_decode_reduced_in_any_exif_orientation(orientation: int) -> None:
    stored = radiograph(803, 1001, 8, seed=6)  # sides not multiples of 8: partial blocks
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", quality=90, exif=exif)
    data = buffer.getvalue()
    full, small, factor = model_inputs(data, MODEL_64)
    assert factor == 4  # 803 / 8 = 101 < 128
    info = decode(data, min_size=128).info
    assert (info.width, info.height) == ((803, 1001) if orientation in (5, 6, 7, 8) else (1001, 803))
    assert_close(full, small, GENERATED_CHEST)


def test_colour_jpeg_uploads_decode_reduced() -> None:
    grey = radiograph(900, 1000, 8, seed=8)
    rgb = np.stack([grey, grey // 2 + 60, grey], axis=-1).astype(np.uint8)
    full, small, factor = model_inputs(to_jpeg(rgb, quality=90), MODEL_64)
    assert factor == 4  # 900 / 8 = 113 < 128
    assert_close(full, small, GENERATED_CHEST)


# --- where no reduction is possible: the full decode, exactly ------------------------------


def _testdata(name: str) -> bytes:
    path = pydicom.data.get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom's test files or the pydicom-data package)")
    return Path(str(path)).read_bytes()


FULL_ONLY = {
    "png": lambda: to_png(radiograph(1000, 1000, 8)),
    "png 16-bit": lambda: to_png(radiograph(1000, 1000, 12) * np.uint16(16)),
    "uncompressed": lambda: dicom_bytes(
        make_dataset(radiograph(1000, 1000, 12), bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    ),
    "rle": lambda: compressed(make_dataset(radiograph(600, 600, 8)), RLELossless),
    "j2k 12-bit without a window (min-max scaling)": j2k12,
    "jpeg lossless process 14 (pydicom-data)": lambda: _testdata("JPGLosslessP14SV1_1s_1f_8b.dcm"),
    "jpeg lossless 16-bit (pydicom-data)": lambda: _testdata("JPEG-LL.dcm"),
    "jpeg extended 12-bit": lambda: _testdata("JPGExtended.dcm"),
    "jpeg-ls lossless": lambda: _testdata("MR_small_jpeg_ls_lossless.dcm"),
    "j2k precision 14 under BitsStored 16 (pydicom-data)": lambda: _testdata("693_J2KR.dcm"),
    "j2k pixel representation mismatch": lambda: _testdata("J2K_pixelrep_mismatch.dcm"),
}


@pytest.mark.parametrize("name", list(FULL_ONLY))
def test_syntaxes_that_cannot_reduce_decode_in_full_with_the_same_result(name: str) -> None:
    data = FULL_ONLY[name]()
    full = decode(data)
    for size in (16, 64, 224):
        image = decode(data, min_size=size)
        assert image.info.decode_reduction == 1 and image.extent is None
        np.testing.assert_array_equal(image.pixels, full.pixels)
        assert image.info == full.info


def test_an_image_under_twice_the_target_decodes_in_full() -> None:
    ds = make_dataset(radiograph(300, 300, 12), bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    data = compressed(ds, JPEG2000Lossless)
    image = decode(data, min_size=224)  # 300 / 2 = 150 < 224
    assert image.info.decode_reduction == 1
    np.testing.assert_array_equal(image.pixels, decode(data).pixels)
    assert decode(data, min_size=64).info.decode_reduction == 4  # 300 / 4 = 75 >= 64


def test_min_size_none_is_the_full_decode() -> None:
    data = generated("j2k 12-bit lossless, window")
    assert decode(data, min_size=None).pixels.shape == (1200, 1000)
    assert decode(data, min_size=None).info.decode_reduction == 1


def test_a_failing_reduced_decode_falls_back_to_the_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    data = generated("j2k 12-bit lossless, window")

    def refuse(*args: object) -> np.ndarray:
        raise OSError("broken data stream")

    monkeypatch.setattr(reduced, "decode_j2k", refuse)
    image = decode(data, min_size=224)
    assert image.info.decode_reduction == 1
    np.testing.assert_array_equal(image.pixels, decode(data).pixels)


# --- the stored values and the header checks ------------------------------------------------


@pytest.mark.parametrize(("bits", "signed"), [(8, False), (12, False), (16, False), (12, True), (16, True)])
def test_the_pillow_j2k_path_gives_pydicoms_stored_values(bits: int, signed: bool) -> None:
    stored = radiograph(96, 80, min(bits, 12), seed=bits).astype(np.int32) << max(0, bits - 12)
    if signed:
        stored -= 1 << (bits - 1)
    dtype = np.uint8 if bits == 8 else np.int16 if signed else np.uint16
    ds = make_dataset(stored.astype(dtype), bits_stored=bits)
    ds = pydicom.dcmread(io.BytesIO(compressed(ds, JPEG2000Lossless)))
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    coding = j2k_coding(frame)
    assert coding is not None and (coding.precision, coding.signed) == (bits, signed)
    values = reduced.decode_j2k(frame, 0, coding, (80, 96))
    np.testing.assert_array_equal(values, ds.pixel_array)
    assert values.dtype == ds.pixel_array.dtype


def test_codestream_header_checks_still_run_before_a_reduced_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pydicom.dcmread(io.BytesIO(generated("j2k 12-bit lossless, window")))

    def never(*args: object) -> np.ndarray:
        raise AssertionError("a codec ran before the header checks refused the file")

    monkeypatch.setattr(reduced, "decode_j2k", never)
    ds.Rows = 1100  # the SIZ says 1200
    with pytest.raises(DecodeError, match="codestream declares 1000 x 1200"):
        decode(dicom_bytes(ds), min_size=224)
    ds.Rows = 1200
    with pytest.raises(DecodeError, match="more than the limit") as caught:
        decode(dicom_bytes(ds), min_size=224, limits=DecodeLimits(max_pixels=1_000_000))
    assert caught.value.http_status == 413


def test_a_truncated_j2k_fails_as_it_does_without_min_size() -> None:
    ds = pydicom.dcmread(io.BytesIO(generated("j2k 12-bit lossless, window")))
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) * 3 // 4]])
    data = dicom_bytes(ds)
    with pytest.raises(DecodeError) as plain:
        decode(data)
    with pytest.raises(DecodeError) as small:
        decode(data, min_size=64)
    assert (small.value.code, small.value.http_status) == (plain.value.code, plain.value.http_status)


# --- real files ----------------------------------------------------------------------------

# pydicom-data's chest CRs (RG1 1955 x 1841, 15-bit; RG3 1760 x 1760, 10-bit; MONOCHROME1,
# windowed), lossless and lossy, and an MR slice (sharp edges on black: the worst case).
PYDICOM_DATA = [
    "RG1_J2KR.dcm",
    "RG1_J2KI.dcm",
    "RG3_J2KR.dcm",
    "RG3_J2KI.dcm",
    "MR2_J2KR.dcm",
    "MR2_J2KI.dcm",
]


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
@pytest.mark.parametrize("name", PYDICOM_DATA)
def test_pydicom_data_j2k_files_decode_reduced_within_tolerance(name: str, config: PreprocessConfig) -> None:
    full, small, factor = model_inputs(_testdata(name), config)
    assert factor >= 2
    assert_close(full, small, REAL_CHEST if name.startswith("RG") else ANY_IMAGE)


SHARED_DICOM = {
    "966_fixed.dcm": (4, 8),  # JPEG 2000 lossless DX, 2000 x 2128, 12-bit: factor at 224 px, 64 px
    "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm": (2, 8),  # JPEG Baseline CR 1024 px
    "Fake_MONOHR1.dcm": (2, 8),
}


@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
@pytest.mark.parametrize("name", list(SHARED_DICOM))
def test_shared_chest_dicoms_decode_reduced_within_tolerance(name: str, config: PreprocessConfig) -> None:
    path = SHARED_DATA / "dicom" / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data ships with the project's CI, not with a clone)")
    full, small, factor = model_inputs(path.read_bytes(), config)
    assert factor == SHARED_DICOM[name][config is MODEL_64]
    assert_close(full, small, REAL_CHEST)


def test_the_shared_corrupt_j2k_still_fails_with_min_size() -> None:
    path = SHARED_DATA / "dicom" / "corrupt_j2k_966.dcm"
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/data ships with the project's CI, not with a clone)")
    with pytest.raises(DecodeError) as caught:
        decode(path.read_bytes(), min_size=224)
    assert caught.value.http_status == 400
