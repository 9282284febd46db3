"""The one formatter of ``{value, ci}`` records, in each layout the reports and tables use."""

from __future__ import annotations

from typing import Any

import pytest

from training.downstream.estimates import estimate_parts, format_estimate

WITH_CI = {"value": 0.81234, "ci": [0.7, 0.9049]}
WITHOUT_CI = {"value": 0.5, "ci": None}


@pytest.mark.parametrize(
    ("entry", "options", "text"),
    [
        (WITH_CI, {}, "0.812 (0.700 to 0.905)"),
        (WITH_CI, {"style": "brackets"}, "0.812 [0.700, 0.905]"),
        (WITH_CI, {"digits": 2, "style": "brackets"}, "0.81 [0.70, 0.90]"),
        (WITHOUT_CI, {}, "0.500"),
        (WITHOUT_CI, {"no_ci": "(no CI)"}, "0.500 (no CI)"),
        (None, {}, "not estimable"),
        ({}, {"missing": "-"}, "-"),
    ],
)
def test_format_estimate(entry: dict[str, Any] | None, options: dict[str, Any], text: str) -> None:
    assert format_estimate(entry, **options) == text


def test_estimate_parts_split_the_value_from_its_interval() -> None:
    assert estimate_parts(WITH_CI) == ("0.812", "0.700 to 0.905")
    assert estimate_parts(WITHOUT_CI) == ("0.500", "")
