"""A JPEG codestream check the codecs do not make: is there enough scan data for the header?

libjpeg stops at an end marker, fills the missing blocks with grey and reports success, so
a 64 x 64 scan under a header that declares 6000 x 6000 decodes "fine". Huffman coding
(SOF0 to SOF3) spends at least one bit on every 8 x 8 block (every sample, lossless) of
the full-resolution component, so fewer scan bits than blocks means the data is cut short.
Arithmetic-coded and hierarchical JPEG have no such bound and are not checked.
"""

from __future__ import annotations

from cxrmsn.errors import CorruptInputError

# SOF0 baseline, SOF1 extended, SOF2 progressive, SOF3 lossless: all Huffman-coded.
_HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2, 0xC3)
_ALL_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # minus DHT, JPG, DAC
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7


def _frame_and_scan(data: bytes) -> tuple[int, int, int, int] | None:
    """(SOF marker, width, height, offset of the first scan's entropy data), or None."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, frame = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xD9 or length < 2:
            return None
        if marker == 0xDA:
            return None if frame is None else (*frame, pos + 2 + length)
        if marker in _ALL_FRAMES and frame is None and pos + 9 <= len(data):
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            frame = (marker, width, height)
        pos += 2 + length
    return None


def check_scan_length(data: bytes, what: str = "JPEG") -> None:
    """Raise ``truncated_input`` when the scan data cannot cover the declared frame.

    Leaves anything it cannot parse to the codec, which reports it as corrupt.
    """
    facts = _frame_and_scan(data)
    if facts is None:
        return
    marker, width, height, scan_start = facts
    if marker not in _HUFFMAN_FRAMES or width <= 0 or height <= 0:
        return
    blocks = -(-width // 8) * -(-height // 8)
    scan_bytes = max(len(data) - scan_start, 0)
    if scan_bytes * 8 < blocks:
        raise CorruptInputError(
            f"the {what} scan data holds {scan_bytes:,} bytes, too few for the {width} x {height} "
            "pixels its header declares: the file is truncated",
            code="truncated_input",
        )
