"""The sizes an encapsulated frame's own codestream declares, read before any codec runs.

A codec allocates what the codestream says (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ),
not what the DICOM Rows and Columns say: a 3 KB JPEG frame whose SOF claims
20000 x 20000 under Rows = Columns = 512 made libjpeg allocate 2 GB. These parsers read
header segments only; nothing here decodes entropy-coded data.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from cxrmsn.errors import CorruptInputError


@dataclass(frozen=True)
class FrameHeader:
    """One size declaration in a codestream header."""

    width: int
    height: int
    components: int | None  # None where the segment does not say (JPEG-LS oversize LSE)
    tiles: int = 1


# --- JPEG and JPEG-LS (ITU-T T.81, T.87) ---

_SOI, _EOI, _LSE, _DHP, _SOF55 = 0xD8, 0xD9, 0xF8, 0xDE, 0xF7
# SOF0-SOF15 minus DHT (C4), JPG (C8), DAC (CC); DHP declares a hierarchical image's size.
_FRAME_MARKERS = (frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {_DHP, _SOF55}
_LSE_OVERSIZE = 4  # LSE ID 4: image dimensions wider than 16 bits (T.87 C.2.4.1.4)
# A marker is 0xFF then a byte from 0x80 to 0xFE. In scan data 0xFF is followed by 0x00
# (JPEG byte stuffing) or by a byte under 0x80 (JPEG-LS bit stuffing); 0xFF 0xFF is fill.
# RST0-RST7 (0xD0-0xD7) carry nothing and are passed over inside the search, so a whole
# scan is skipped in one C-speed step; the search also skips junk between segments, as
# libjpeg does.
_MARKER = re.compile(rb"\xff[\x80-\xcf\xd8-\xfe]")
#: More marker segments than any real frame has (tables, APPn, one SOS per scan): beyond
#: this the walk would cost seconds of Python per upload, so the frame is refused.
MAX_JPEG_SEGMENTS = 10_000


def jpeg_frame_headers(data: bytes) -> list[FrameHeader]:
    """Every frame size a JPEG or JPEG-LS codestream declares before its EOI.

    SOFn, DHP and SOF55 segments and JPEG-LS oversize LSE segments, in order, wherever
    they are (a second frame header after a scan counts too). Empty when the data does
    not start with SOI or holds no readable frame header; CorruptInputError past
    ``MAX_JPEG_SEGMENTS`` segments.
    """
    if not data.startswith(b"\xff\xd8"):
        return []
    headers: list[FrameHeader] = []
    found = _MARKER.search(data, 2)
    for _ in range(MAX_JPEG_SEGMENTS):
        if found is None or data[found.start() + 1] == _EOI:
            return headers
        pos, marker = found.start(), data[found.start() + 1]
        end = pos + 2
        if marker != _SOI:  # every other marker the pattern finds has a length field
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            end = pos + 2 + length
            if length < 2 or end > len(data):
                return headers  # a truncated segment: the codec fails here too
            header = _segment_header(marker, data[pos + 4 : end])
            if header is not None:
                headers.append(header)
        found = _MARKER.search(data, end)
    raise CorruptInputError(f"the JPEG frame has more than {MAX_JPEG_SEGMENTS:,} marker segments")


def _segment_header(marker: int, segment: bytes) -> FrameHeader | None:
    if marker in _FRAME_MARKERS and len(segment) >= 6:
        _, height, width, components = struct.unpack_from(">BHHB", segment)
        return FrameHeader(width=width, height=height, components=components)
    if marker == _LSE and len(segment) >= 2 and segment[0] == _LSE_OVERSIZE:
        size = segment[1]  # bytes per dimension
        if not 2 <= size <= 4 or len(segment) < 2 + 2 * size:
            return None
        height = int.from_bytes(segment[2 : 2 + size], "big")
        width = int.from_bytes(segment[2 + size : 2 + 2 * size], "big")
        return FrameHeader(width=width, height=height, components=None)
    return None


# --- JPEG 2000 (ITU-T T.800) ---

_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_SIZ_FIELDS = struct.Struct(">HHIIIIIIIIH")  # Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz


def j2k_frame_header(data: bytes) -> FrameHeader | None:
    """The image and tile grid a JPEG 2000 codestream's SIZ declares, or None.

    The data is a bare codestream (SOC then SIZ) or a JP2 file, whose first 'jp2c' box
    holds the codestream. None when neither, or when SIZ is short or inconsistent.
    """
    codestream = _jp2_codestream(data) if data.startswith(_JP2_SIGNATURE) else data
    if codestream is None or not codestream.startswith(_SOC_SIZ):
        return None
    if len(codestream) < 4 + _SIZ_FIELDS.size:
        return None
    lsiz, _, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz, csiz = _SIZ_FIELDS.unpack_from(
        codestream, 4
    )
    grid_ok = xosiz < xsiz and yosiz < ysiz and xtsiz > 0 and ytsiz > 0
    tiles_ok = xtosiz <= xosiz < xtosiz + xtsiz and ytosiz <= yosiz < ytosiz + ytsiz
    if lsiz < 38 + 3 * csiz or csiz == 0 or not (grid_ok and tiles_ok):
        return None
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    return FrameHeader(width=xsiz - xosiz, height=ysiz - yosiz, components=csiz, tiles=tiles)


def _jp2_codestream(data: bytes) -> bytes | None:
    """The contents of the first top-level 'jp2c' box of a JP2 file, or None."""
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1 and pos + 16 <= len(data):  # a 64-bit length follows the type
            length, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif length == 0:  # the box runs to the end of the file
            length = len(data) - pos
        if length < header:
            return None
        if kind == b"jp2c":
            return data[pos + header : pos + length]
        pos += length
    return None


@dataclass(frozen=True)
class J2KCoding:
    """What a JPEG 2000 main header says about decoding at a reduced resolution."""

    precision: int  # bits per sample of component 0 (Ssiz)
    signed: bool
    x_offset: int  # XOsiz, YOsiz: the image's origin on the reference grid
    y_offset: int
    levels: int  # the fewest wavelet decomposition levels COD or a COC declares


_COD, _COC, _SOT, _SOD = 0x52, 0x53, 0x90, 0x93
#: Main-header marker segments read before giving up (real headers hold a handful).
MAX_J2K_MAIN_SEGMENTS = 256


def j2k_coding(data: bytes) -> J2KCoding | None:
    """Precision, signedness, image offset and decomposition levels from a J2K main header.

    Reads SIZ and the COD and COC segments up to the first tile-part (SOT); None when any
    is missing or malformed (the caller then decodes at full resolution). Tile-part headers
    may declare fewer levels: a decode that asks for too many fails, and the caller falls
    back to the full decode.
    """
    codestream = _jp2_codestream(data) if data.startswith(_JP2_SIGNATURE) else data
    if codestream is None or j2k_frame_header(codestream) is None:
        return None
    lsiz, _, _, _, xosiz, yosiz, *_, csiz = _SIZ_FIELDS.unpack_from(codestream, 4)
    ssiz = codestream[4 + 38]  # component 0's Ssiz, after the 38 bytes of fixed SIZ fields
    levels: int | None = None
    pos = 4 + lsiz
    for _ in range(MAX_J2K_MAIN_SEGMENTS):
        if pos + 4 > len(codestream) or codestream[pos] != 0xFF:
            return None
        marker, length = codestream[pos + 1], int.from_bytes(codestream[pos + 2 : pos + 4], "big")
        if marker in (_SOT, _SOD):
            break
        segment = codestream[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        found = _declared_levels(marker, segment, csiz)
        if found is not None:
            levels = found if levels is None else min(levels, found)
        pos += 2 + length
    else:
        return None
    if levels is None:
        return None
    return J2KCoding(
        precision=(ssiz & 0x7F) + 1, signed=bool(ssiz & 0x80), x_offset=xosiz, y_offset=yosiz, levels=levels
    )


def _declared_levels(marker: int, segment: bytes, components: int) -> int | None:
    """The decomposition levels a COD (Scod, SGcod, SPcod) or COC (Ccoc, Scoc, SPcoc) declares."""
    if marker == _COD and len(segment) >= 6:
        return segment[5]
    if marker == _COC:
        index = 2 if components >= 257 else 1  # Ccoc is 2 bytes when Csiz >= 257
        if len(segment) >= index + 2:
            return segment[index + 1]
    return None
