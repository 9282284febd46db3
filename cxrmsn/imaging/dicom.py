"""DICOM chest radiographs to a grey-scale image in [0, 1].

Follows the display pipeline of DICOM PS3.3 C.11: stored values -> modality LUT
(rescale slope/intercept or a Modality LUT Sequence) -> VOI LUT or window -> invert
MONOCHROME1 so that bone is bright. Nothing here reads, logs or returns patient
identifiers; pydicom's own warnings (which can quote element values) are swallowed.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from cxrmsn.errors import (
    CorruptInputError,
    DecodeError,
    NotSingleGreyImageError,
    UnsupportedFormatError,
)
from cxrmsn.imaging import reduced
from cxrmsn.imaging.checks import (
    check_declared_size,
    check_finite,
    check_frame_header,
    check_not_blank,
    echo,
    non_finite_error,
)
from cxrmsn.imaging.codestream import FrameHeader, j2k_coding, j2k_frame_header, jpeg_frame_headers
from cxrmsn.imaging.deflate import inflate_if_deflated
from cxrmsn.imaging.jpeg import check_scan_length
from cxrmsn.imaging.reduced import Extent
from cxrmsn.imaging.types import DecodedImage, DecodeLimits, ImageInfo

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
# JPEG transfer syntaxes whose codestream is Huffman-coded (checked for truncated scans).
_HUFFMAN_JPEG_SYNTAXES = (
    pydicom.uid.JPEGBaseline8Bit,
    pydicom.uid.JPEGExtended12Bit,
    pydicom.uid.JPEGLossless,
    pydicom.uid.JPEGLosslessSV1,
)
_JPEG_FAMILY = (*pydicom.uid.JPEGTransferSyntaxes, *pydicom.uid.JPEGLSTransferSyntaxes)
# Syntaxes a reduced-resolution decode can serve (``reduced``); JPEG Extended only at 8 bits.
_REDUCIBLE_J2K = (pydicom.uid.JPEG2000Lossless, pydicom.uid.JPEG2000)
_REDUCIBLE_JPEG = (pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEGExtended12Bit)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_UID_CHARACTERS = frozenset("0123456789.")
_UID_MAX_LENGTH = 64


class _DropRecords(logging.Filter):
    """pydicom's log messages can quote element values (patient data): drop them all.

    Decoding failures reach callers as typed ``DecodeError``s instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return False


logging.getLogger("pydicom").addFilter(_DropRecords())
GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
PIXEL_DATA_TAG = 0x7FE00010


def decode_dicom(
    data: bytes, limits: DecodeLimits, target: int | None = None, *, keep_header: bool = False
) -> DecodedImage:
    """``target``: decode at a reduced resolution whose shorter side stays >= ``target`` px
    where the syntax allows (``reduced``); None: full resolution. ``keep_header``: return the
    data set, less its pixel data, as ``header``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read_dataset(data, limits)
        _check_is_single_grey_image(ds, limits)
        stored, factor, extent = _decode_pixels(ds, limits, target)
        image, notes = _to_display(stored, ds)
    check_not_blank(image)
    info = _info(ds, image, notes, factor)
    return DecodedImage(
        pixels=image, info=info, extent=extent, header=_without_pixels(ds) if keep_header else None
    )


def _without_pixels(ds: Dataset) -> Dataset:
    """A new data set with the elements of ``ds`` before its pixel data, as reading it with
    ``stop_before_pixels`` gives (and without the decoded-array cache pydicom keeps on ``ds``):
    the header DICOM output copies."""
    header = Dataset({element.tag: element for element in ds if element.tag < PIXEL_DATA_TAG})
    header.file_meta = ds.file_meta
    return header


def _read_dataset(data: bytes, limits: DecodeLimits) -> Dataset:
    try:
        inflated = inflate_if_deflated(data, limits)
        ds = pydicom.dcmread(io.BytesIO(data if inflated is None else inflated), force=True)
        # Touch every top-level element now so a truncated file fails here, not later.
        for _ in ds.iterall():
            pass
    except DecodeError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed bytes
        raise CorruptInputError(f"not a readable DICOM file ({type(exc).__name__})") from None
    if len(ds) == 0:
        raise CorruptInputError("not a readable DICOM file (no data elements)")
    if inflated is not None:  # report (and decode as) the file's own syntax
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    return ds


def _check_is_single_grey_image(ds: Dataset, limits: DecodeLimits) -> None:
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise NotSingleGreyImageError("float pixel data is not a radiograph", code="float_pixel_data")
    if "PixelData" not in ds or not ds.PixelData:
        raise NotSingleGreyImageError(
            "the DICOM file has no pixel data (a report, a presentation state, or a truncated file?)",
            code="no_pixel_data",
        )
    frames = _int_or(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise NotSingleGreyImageError(
            f"the DICOM file holds {frames} frames; send one radiograph per file",
            code="multi_frame",
        )
    samples = _int_or(ds, "SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if samples != 1 or photometric not in GREY_PHOTOMETRICS:
        raise NotSingleGreyImageError(
            f"colour DICOM (SamplesPerPixel {samples}, PhotometricInterpretation "
            f"{echo(photometric)}); a chest radiograph is MONOCHROME1 or MONOCHROME2",
            code="not_greyscale",
        )
    check_declared_size(_int_or(ds, "Columns", 0), _int_or(ds, "Rows", 0), limits)


def _decode_pixels(
    ds: Dataset, limits: DecodeLimits, target: int | None
) -> tuple[np.ndarray, int, Extent | None]:
    """(stored values, reduction factor, extent on them when reduced) after the header checks."""
    syntax = _transfer_syntax(ds)
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError:
        raise UnsupportedFormatError(
            f"no decoder for DICOM transfer syntax {echo(syntax)}", code="unsupported_transfer_syntax"
        ) from None
    if not decoder.is_available:
        raise UnsupportedFormatError(
            f"the decoder for {echo(syntax.name)} is not installed", code="unsupported_transfer_syntax"
        )
    if decoder.is_native:
        _check_native_length(ds)
    else:
        frames = _check_encoded_frames(ds, syntax, limits)
        if target is not None and len(frames) == 1:
            found = _decode_reduced(ds, syntax, frames[0], target)
            if found is not None:
                return found
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # codec errors come as RuntimeError, ValueError, ...
        raise CorruptInputError(
            f"the {echo(syntax.name)} pixel data cannot be decoded ({type(exc).__name__})"
        ) from None
    if pixels.ndim != 2:
        raise NotSingleGreyImageError(
            f"decoded pixel data has shape {pixels.shape}, not one 2-D image",
            code="not_greyscale",
        )
    return pixels, 1, None


def _decode_reduced(
    ds: Dataset, syntax: UID, frame: bytes, target: int
) -> tuple[np.ndarray, int, Extent] | None:
    """The frame decoded at a reduced resolution, or None: decode it at full resolution instead.

    None where no reduction keeps ``target`` px, where the codestream's sample format is not
    the one the DICOM header declares, where the display scales by the image's own value
    range, and where the reduced decode fails (the full decode then gives the file's real
    result: pixels or its error).
    """
    rows, columns = _int_or(ds, "Rows", 0), _int_or(ds, "Columns", 0)
    bits_stored = _int_or(ds, "BitsStored", 0)
    signed = _int_or(ds, "PixelRepresentation", 0) == 1
    try:
        if _display_uses_value_range(ds):
            return None
        if syntax in _REDUCIBLE_J2K:
            coding = j2k_coding(frame)
            if coding is None or coding.precision != bits_stored or coding.signed != signed:
                return None
            levels = reduced.j2k_levels(columns, rows, target, coding)
            if levels == 0 or coding.precision > 16:
                return None
            factor = 1 << levels
            expected = (-(-columns // factor), -(-rows // factor))
            stored = reduced.decode_j2k(frame, levels, coding, expected)
            return stored, factor, reduced.j2k_extent(columns, rows, factor)
        if syntax in _REDUCIBLE_JPEG and bits_stored == 8 and not signed:
            image = reduced.open_jpeg(frame)
            if image.mode != "L" or image.bits != 8 or image.size != (columns, rows):
                return None
            factor = reduced.draft_jpeg(image, target)
            if factor == 1:
                return None
            image.load()
            return np.asarray(image), factor, reduced.jpeg_extent(columns, rows, factor)
    except MemoryError:
        raise
    except Exception:  # a malformed LUT, or OpenJPEG or libjpeg refused the data:
        return None  # the full decode reports it, in the order it always has
    return None


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        # No file meta: pydicom parsed it as implicit or explicit little endian.
        implicit = ds.is_implicit_VR
        syntax = pydicom.uid.ImplicitVRLittleEndian if implicit else pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
    return UID(str(syntax))


def _check_native_length(ds: Dataset) -> None:
    bits_allocated = _int_or(ds, "BitsAllocated", 16)
    expected_bits = _int_or(ds, "Rows", 0) * _int_or(ds, "Columns", 0) * bits_allocated
    expected = (expected_bits + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise CorruptInputError(
            f"pixel data holds {actual:,} bytes; Rows x Columns x BitsAllocated needs {expected:,}",
            code="pixel_data_truncated",
        )


def _check_encoded_frames(ds: Dataset, syntax: UID, limits: DecodeLimits) -> list[bytes]:
    """Check each frame's codestream header before a codec allocates what it declares.

    Returns the frames, as pydicom's decoder splits them.
    """
    rows, columns = _int_or(ds, "Rows", 0), _int_or(ds, "Columns", 0)
    samples = _int_or(ds, "SamplesPerPixel", 1)
    frames = _encoded_frames(ds)
    for frame in frames:
        kind, headers = _frame_headers(frame, syntax)
        for header in headers:
            check_frame_header(header, rows=rows, columns=columns, samples=samples, limits=limits, what=kind)
        if syntax in _HUFFMAN_JPEG_SYNTAXES:
            check_scan_length(frame, "DICOM JPEG")
    return frames


def _encoded_frames(ds: Dataset) -> list[bytes]:
    """The frames pydicom's decoder will decode: every one its offset tables name.

    pydicom decodes frames beyond NumberOfFrames (``allow_excess_frames``), so all are
    returned, split exactly as pydicom splits them.
    """
    try:
        extended = None
        if "ExtendedOffsetTable" in ds:
            offsets, lengths = ds.ExtendedOffsetTable, ds.get("ExtendedOffsetTableLengths", b"")
            extended = (offsets, lengths) if len(offsets) == len(lengths) else None  # as pydicom does
        frames = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1, extended_offsets=extended)
        return list(frames)
    except Exception as exc:  # broken encapsulation: pydicom's decoder would fail on it too
        raise CorruptInputError(
            f"the encapsulated pixel data cannot be split into frames ({type(exc).__name__})"
        ) from None


def _frame_headers(frame: bytes, syntax: UID) -> tuple[str, list[FrameHeader]]:
    """(codestream kind, its size declarations); CorruptInputError when it has none.

    RLE has no size of its own: pydicom decodes it into a Rows x Columns buffer.
    """
    if syntax in pydicom.uid.JPEG2000TransferSyntaxes:
        header = j2k_frame_header(frame)
        kind, headers = "JPEG 2000", [] if header is None else [header]
    elif syntax in _JPEG_FAMILY:
        kind, headers = "JPEG", jpeg_frame_headers(frame)
    else:
        return "RLE", []
    if not headers:
        raise CorruptInputError(f"the {kind} frame has no readable frame header (SOF or SIZ)")
    return kind, headers


def _to_display(stored: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    values = _modality_values(stored, ds)
    check_finite(values, "the modality LUT or rescale")
    image = _apply_voi_lut(values, ds) if _has_voi_lut(ds) else _apply_window(values, ds, notes)
    check_finite(image, "the VOI LUT or window")
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        image = 1.0 - image
    return np.clip(image, 0.0, 1.0, out=image).astype(np.float32, copy=False), notes


def _display_uses_value_range(ds: Dataset) -> bool:
    """True when ``_to_display`` scales by the image's own minimum and maximum (``_min_max``).

    Those extremes are single pixels (noise, markers, the wavelet's ringing at an edge) that
    a reduced decode averages away or overshoots: the contrast of the whole image would
    change (measured: a mean model-input difference of 0.2 on the 966 chest DX without its
    window), so such files are decoded at full resolution. Mirrors ``_apply_window`` and
    ``_without_window``.
    """
    if _has_voi_lut(ds):
        return False
    window = _first_window(ds)
    if window is None:
        return not (_int_or(ds, "BitsStored", 16) <= 8 and _stored_values_unchanged(ds))
    function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
    return function not in ("SIGMOID", "LINEAR_EXACT") and window[1] < 1.0


def _modality_values(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values through the modality LUT, as float32 (exact for integers below 2**24)."""
    if "ModalityLUTSequence" in ds:
        _check_modality_lut(ds)
        try:
            mapped = pydicom.pixels.apply_modality_lut(stored, ds)
            return np.asarray(mapped, dtype=np.float32)
        except Exception as exc:  # the message can quote LUT values: name the type only
            raise CorruptInputError(
                f"the Modality LUT Sequence cannot be applied ({type(exc).__name__})"
            ) from None
    values = stored.astype(np.float32)
    slope, intercept = _float_or(ds, "RescaleSlope", 1.0), _float_or(ds, "RescaleIntercept", 0.0)
    if max(abs(slope), abs(intercept)) > _FLOAT32_MAX:
        raise non_finite_error("the rescale slope or intercept")
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _lut_item(ds: Dataset, keyword: str, name: str) -> Dataset | None:
    """The first item of a LUT sequence; None when absent or empty; CorruptInputError if malformed."""
    if keyword not in ds:
        return None
    sequence = ds[keyword].value
    if not isinstance(sequence, Sequence):
        raise CorruptInputError(f"the {name} is not a sequence (wrong VR)")
    if len(sequence) == 0:
        return None
    return sequence[0]


def _check_modality_lut(ds: Dataset) -> None:
    """A Modality LUT item with a descriptor and as many entries as it declares, or CorruptInputError."""
    item = _lut_item(ds, "ModalityLUTSequence", "Modality LUT Sequence")
    if item is None:
        raise CorruptInputError("the Modality LUT Sequence is empty")
    _lut_descriptor(item, "Modality LUT Sequence")
    declared = int(item.LUTDescriptor[0]) or 65536  # 0 means 2**16 entries (PS3.3 C.11.1.1)
    entries = _lut_entries(item.get("LUTData"), "Modality LUT Sequence")
    if entries.size < declared:
        raise CorruptInputError(
            f"the Modality LUT holds {entries.size:,} entries; its descriptor declares {declared:,}"
        )


def _has_voi_lut(ds: Dataset) -> bool:
    item = _lut_item(ds, "VOILUTSequence", "VOI LUT Sequence")
    return item is not None and "LUTData" in item


def _apply_voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    item = ds.VOILUTSequence[0]
    first_mapped, output_bits = _lut_descriptor(item, "VOI LUT Sequence")
    if _int_or(ds, "PixelRepresentation", 0) == 1 and first_mapped > 32767:
        first_mapped -= 65536  # the descriptor is read as US; signed data maps from a negative value
    lut = _lut_entries(item.LUTData, "VOI LUT Sequence")
    if lut.size == 0:
        raise CorruptInputError("the VOI LUT Sequence has an empty LUT")
    index = np.clip(np.rint(values) - first_mapped, 0, lut.size - 1).astype(np.intp)
    top = max(float(2**output_bits - 1), float(lut.max()))
    return lut[index] / top


def _lut_descriptor(item: Dataset, name: str) -> tuple[int, int]:
    """(first mapped value, output bits) from a LUTDescriptor, or CorruptInputError."""
    try:
        _, first_mapped, output_bits = (int(value) for value in item.LUTDescriptor)
    except (TypeError, ValueError, AttributeError):
        raise CorruptInputError(f"the {name} has a missing or invalid LUT Descriptor") from None
    if not 1 <= output_bits <= 16:
        raise CorruptInputError(f"the {name} declares {output_bits}-bit output; 1 to 16 are valid")
    return first_mapped, output_bits


def _lut_entries(data: object, name: str) -> np.ndarray:
    """LUT Data as float32 entries; CorruptInputError (quoting nothing) when not numbers."""
    if data is None:
        return np.zeros(0)
    if isinstance(data, bytes):  # OW: 16-bit little-endian words
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2").astype(np.float32)
    entries = data if isinstance(data, (list, tuple, pydicom.multival.MultiValue)) else [data]
    if any(isinstance(entry, (str, bytes)) for entry in entries):
        raise CorruptInputError(f"the {name} LUT Data is text, not numbers")
    try:
        return np.asarray(entries, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise CorruptInputError(f"the {name} LUT Data is not a list of numbers") from None


def _apply_window(values: np.ndarray, ds: Dataset, notes: list[str]) -> np.ndarray:
    window = _first_window(ds)
    if window is None:
        return _without_window(values, ds, notes)
    center, width = window
    if max(abs(center), width) > _FLOAT32_MAX:
        raise non_finite_error("the window center or width")
    function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return (values - center) / width + 0.5
    if width < 1.0:
        notes.append(f"window width {width:g} is below 1: scaled from the image's own value range")
        return _min_max(values)
    # PS3.3 C.11.2.1.2.1: the LINEAR function, with the output range [0, 1].
    return (values - (center - 0.5)) / (width - 1.0) + 0.5


def _without_window(values: np.ndarray, ds: Dataset, notes: list[str]) -> np.ndarray:
    bits = _int_or(ds, "BitsStored", 16)
    if bits <= 8 and _stored_values_unchanged(ds):
        # 8-bit data without a window is display-ready, as a PNG would be: keep its levels.
        return values / float(2**bits - 1)
    notes.append("no VOI LUT or window in the file: scaled from the image's own value range")
    return _min_max(values)


def _stored_values_unchanged(ds: Dataset) -> bool:
    """True when no modality LUT or rescale alters unsigned stored values."""
    if "ModalityLUTSequence" in ds or _int_or(ds, "PixelRepresentation", 0) != 0:
        return False
    return _float_or(ds, "RescaleSlope", 1.0) == 1.0 and _float_or(ds, "RescaleIntercept", 0.0) == 0.0


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center = float(_first(ds.WindowCenter))
        width = float(_first(ds.WindowWidth))
    except (TypeError, ValueError):
        return None
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        return None
    return center, width


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return value[0] if len(value) else None
    return value


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _info(ds: Dataset, image: np.ndarray, notes: list[str], factor: int = 1) -> ImageInfo:
    """``factor`` > 1: ``image`` was decoded at a reduced resolution; the size reported is
    Columns x Rows, which the codestream's own header was checked to match."""
    modality = _str_or_none(ds, "Modality")
    warnings_out = list(notes)
    if modality not in RADIOGRAPH_MODALITIES:
        warnings_out.insert(
            0,
            f"Modality is {echo(modality) if modality else 'missing'}, not CR, DX or DR: "
            "the model was trained on chest radiographs only",
        )
    return ImageInfo(
        format="dicom",
        width=int(image.shape[1]) if factor == 1 else _int_or(ds, "Columns", 0),
        height=int(image.shape[0]) if factor == 1 else _int_or(ds, "Rows", 0),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip(),
        bits_stored=_int_or(ds, "BitsStored", _int_or(ds, "BitsAllocated", 0)),
        modality=echo(modality) if modality else None,
        view_position=_echo_or_none(ds, "ViewPosition"),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        study_instance_uid=_uid_or_none(ds, "StudyInstanceUID"),
        series_instance_uid=_uid_or_none(ds, "SeriesInstanceUID"),
        sop_instance_uid=_uid_or_none(ds, "SOPInstanceUID"),
        warnings=tuple(warnings_out),
        decode_reduction=factor,
    )


def _int_or(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _float_or(ds: Dataset, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    try:
        number = float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def _str_or_none(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _echo_or_none(ds: Dataset, keyword: str) -> str | None:
    """A text value as returned in the response: at most ``ECHO_LIMIT`` printable characters."""
    text = _str_or_none(ds, keyword)
    return echo(text) if text else None


def _uid_or_none(ds: Dataset, keyword: str) -> str | None:
    """A UID made of digits and dots within the 64-character limit, else None (never cut short)."""
    text = _str_or_none(ds, keyword)
    if text is None or len(text) > _UID_MAX_LENGTH or not set(text) <= _UID_CHARACTERS:
        return None
    return text
