"""Reading the sources' CSV tables, plain or gzip-compressed (as MIMIC ships them)."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path


def find_table(folder: Path, name: str) -> Path:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {folder / name} nor {folder / name}.gz exists")


def read_table(path: Path, *, required: tuple[str, ...] = ()) -> Iterator[dict[str, str]]:
    """Rows as dicts of strings; fails clearly when a required column is missing."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in required if name not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing} (has {reader.fieldnames})")
        for values in reader:
            yield {key: (value or "") for key, value in values.items() if key is not None}
