"""Deflated Explicit VR Little Endian DICOM, inflated with a cap before pydicom reads it.

pydicom inflates a deflated data set (1.2.840.10008.1.2.1.99) with one ``zlib.decompress``
call, before any element is read: a 1 GiB private element of zeros deflates to about
1 MB and cost 2 GB of memory before a single check ran. Here the data set is inflated
piece by piece and refused as soon as it passes a cap derived from the pixel limit;
what passes is handed to pydicom as the same file in Explicit VR Little Endian.
"""

from __future__ import annotations

import io
import zlib

from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from cxrmsn.errors import CorruptInputError, ImageTooLargeError
from cxrmsn.imaging.types import DecodeLimits

#: Bytes of pixel data per pixel the cap allows: 16-bit stored values, the most CR and DX use.
CAP_BYTES_PER_PIXEL = 2
#: Room for everything else in the data set: overlays, icon images, private elements.
CAP_HEADROOM_BYTES = 32 * 1024 * 1024
_INPUT_PIECE = 64 * 1024  # deflated bytes fed to zlib at a time
_OUTPUT_PIECE = 1024 * 1024  # the most inflated bytes one zlib call may return


def inflated_size_cap(limits: DecodeLimits) -> int:
    """The most bytes a deflated data set may inflate to: the largest admissible image plus headroom."""
    return limits.max_pixels * CAP_BYTES_PER_PIXEL + CAP_HEADROOM_BYTES


def inflate_if_deflated(data: bytes, limits: DecodeLimits) -> bytes | None:
    """For a deflated DICOM file: the same file inflated, its file meta saying Explicit VR
    Little Endian. None for any other transfer syntax.

    Raises ImageTooLargeError past ``inflated_size_cap`` and CorruptInputError for a
    deflate stream that is invalid or stops early. pydicom's own meta reader decides the
    syntax, so this check and ``dcmread`` can never disagree about which files are deflated.
    """
    source = io.BytesIO(data)
    read_preamble(source, True)
    meta_start = source.tell()
    meta = _read_file_meta_info(source)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    pieces = _inflate_capped(memoryview(data)[source.tell() :], inflated_size_cap(limits))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    encoded_meta = DicomBytesIO()
    write_file_meta_info(encoded_meta, meta, enforce_standard=False)
    return b"".join([data[:meta_start], encoded_meta.getvalue(), *pieces])


def _inflate_capped(deflated: memoryview, cap: int) -> list[bytes]:
    """The raw deflate stream inflated, in pieces of at most ``_OUTPUT_PIECE`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pieces: list[bytes] = []
    inflated = 0
    try:
        for start in range(0, len(deflated), _INPUT_PIECE):
            pending: bytes | memoryview = deflated[start : start + _INPUT_PIECE]
            while not inflater.eof:
                piece = inflater.decompress(pending, _OUTPUT_PIECE)
                inflated += len(piece)
                if inflated > cap:
                    raise _too_large(cap)
                pieces.append(piece)
                pending = inflater.unconsumed_tail
                if not pending and len(piece) < _OUTPUT_PIECE:
                    break  # this input is used up and zlib holds no more output for it
            if inflater.eof:
                break
    except zlib.error:
        raise CorruptInputError("the deflated DICOM data set is not a valid deflate stream") from None
    if not inflater.eof:
        raise CorruptInputError("the deflated DICOM data set stops before its deflate stream ends")
    return pieces


def _too_large(cap: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"the deflated DICOM data set inflates to more than {cap:,} bytes, more than an image "
        f"within the pixel limit needs ({CAP_BYTES_PER_PIXEL} bytes a pixel plus "
        f"{CAP_HEADROOM_BYTES // (1024 * 1024)} MiB): refused as a decompression bomb"
    )
