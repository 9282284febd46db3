"""Text of one estimate record ``{"value": v, "ci": [low, high] | None}`` (``metrics.evaluate``'s
AUROC and AUPRC entries, ``paired_comparison``'s difference): the one formatter of reports,
result tables and figure legends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

#: "to": ``0.812 (0.700 to 0.900)`` (reports, tables of runs); "brackets": ``0.812 [0.700, 0.900]``
Style = Literal["to", "brackets"]


def estimate_parts(entry: Mapping[str, Any], *, digits: int = 3) -> tuple[str, str]:
    """(value, CI) as text: ``("0.812", "0.700 to 0.900")``; the CI is ``""`` when there is none."""
    bounds = _bounds(entry, digits)
    return f"{entry['value']:.{digits}f}", (f"{bounds[0]} to {bounds[1]}" if bounds else "")


def format_estimate(
    entry: Mapping[str, Any] | None,
    *,
    digits: int = 3,
    style: Style = "to",
    missing: str = "not estimable",
    no_ci: str = "",
) -> str:
    """``0.812 (0.700 to 0.900)`` (or ``0.812 [0.700, 0.900]``); ``missing`` without an estimate,
    the value followed by ``no_ci`` (when not empty) without a CI."""
    if not entry:
        return missing
    value, bounds = f"{entry['value']:.{digits}f}", _bounds(entry, digits)
    if bounds is None:
        return f"{value} {no_ci}" if no_ci else value
    low, high = bounds
    return f"{value} [{low}, {high}]" if style == "brackets" else f"{value} ({low} to {high})"


def _bounds(entry: Mapping[str, Any], digits: int) -> tuple[str, str] | None:
    ci = entry.get("ci")
    return (f"{ci[0]:.{digits}f}", f"{ci[1]:.{digits}f}") if ci else None
