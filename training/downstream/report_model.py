"""What a report shows, independent of its layout: the types ``report.gather_report`` fills and
``report_markdown`` and ``report_html`` lay out (so report.md and report.html cannot disagree)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


class Strong(str):
    """A piece of text shown in bold."""


class Code(str):
    """A piece of text shown as code (paths, names)."""


Inline = tuple[str, ...]  # plain str, Strong and Code pieces, in order


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    align: str  # "l" or "r" per column
    rows: Sequence[tuple[str, ...]]
    strong_rows: frozenset[int] = frozenset()  # the selected run
    muted_rows: frozenset[int] = frozenset()  # labels without an estimate


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Report:
    title: str
    notice: str
    headline: list[tuple[str, str, str]]  # (name, value, CI or "")
    facts: list[Inline]
    tables: list[Table]
    figures: list[Figure] = field(default_factory=list)
