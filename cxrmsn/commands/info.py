"""Decode DICOM, PNG or JPEG files and print what the decoder found, as JSON lines.

Prints format, size, photometric interpretation, modality, view position, UIDs and
warnings (never patient identifiers), plus the decoded image's value range. A file
that cannot be decoded prints its error code and message; the exit status is 1 if
any file failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "decode image files and print what the decoder found"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="DICOM, PNG or JPEG files")


def run(args: argparse.Namespace) -> int:
    from cxrmsn.errors import DecodeError
    from cxrmsn.imaging import decode

    failures = 0
    for path in args.files:
        record: dict[str, object] = {"file": str(path)}
        try:
            image = decode(path.read_bytes())
        except DecodeError as error:
            record.update(error.to_dict(), status=error.http_status)
            failures += 1
        except OSError as error:
            record.update(error="unreadable_file", detail=error.strerror or str(error))
            failures += 1
        else:
            record.update(image.info.to_dict())
            record["pixel_range"] = [float(image.pixels.min()), float(image.pixels.max())]
        print(json.dumps(record))
    return 1 if failures else 0
