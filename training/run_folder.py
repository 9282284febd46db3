"""What a run folder holds besides checkpoints: config, code version, CSV logs, peak memory."""

from __future__ import annotations

import csv
import io
import json
import platform
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from cxrmsn.fileio import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]


#: A pretraining run's encoder files (checkpoints/): the last epoch's and the best training-loss epoch's.
ENCODER_FILES = {"last": "encoder.safetensors", "best_loss": "encoder_best_loss.safetensors"}


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def code_version() -> dict[str, Any]:
    """git describe/commit/dirty of the source tree (when it is a git checkout) and package versions."""
    packages: dict[str, str | None] = {}
    for name in ("cxr-msn", "torch", "torchvision", "timm", "numpy", "scikit-learn", "safetensors"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "git_describe": _git("describe", "--always", "--dirty", "--tags"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
    }


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its finished children (Linux: KiB units)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1),
    }


class CsvLog:
    """A CSV file with a fixed header, appended row by row (flushed at once)."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = tuple(columns)
        if not path.is_file():
            atomic_write_text(path, ",".join(self.columns) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"{self.path.name}: unknown columns {sorted(unknown)}")
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([_format(row.get(c, "")) for c in self.columns])
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())

    def keep_rows(self, predicate: Callable[[dict[str, str]], bool]) -> None:
        """Rewrite the file keeping the rows for which ``predicate`` holds (resuming a run)."""
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if predicate(row)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())


def read_csv_log(path: Path) -> list[dict[str, Any]]:
    """The rows a ``CsvLog`` wrote, numbers parsed (int, then float), other text kept; [] if absent."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [{key: _parse(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _parse(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
