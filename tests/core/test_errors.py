"""The one error registry: every code has a status, and the README's table is the registry."""

from __future__ import annotations

import re
from pathlib import Path

from cxrmsn import errors
from cxrmsn.errors import ERROR_CODES, ApiError, DecodeError, NotAChestRadiographError

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(?P<code>[a-z_]+)` \| (?P<status>\d{3}) \|", re.MULTILINE)


def _readme_error_table() -> dict[str, int]:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| code | status | answered by | when |") :]
    table = table[: table.index("\n\n")]
    return {match["code"]: int(match["status"]) for match in ROW.finditer(table)}


def test_the_readme_error_table_is_the_registry() -> None:
    assert _readme_error_table() == {code: entry.status for code, entry in ERROR_CODES.items()}


def test_every_status_is_an_http_error() -> None:
    assert all(400 <= entry.status <= 599 and entry.meaning for entry in ERROR_CODES.values())


def test_every_error_class_of_the_core_has_a_registered_code() -> None:
    classes = [
        value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, ApiError)
    ]
    assert DecodeError in classes
    for cls in classes:
        assert cls.code in ERROR_CODES, cls.__name__


def test_the_status_and_body_come_from_the_code() -> None:
    error = NotAChestRadiographError("not a chest radiograph", score=9.0, threshold=4.0)
    assert (error.http_status, error.to_dict()) == (
        422,
        {"error": "not_a_chest_radiograph", "detail": "not a chest radiograph"},
    )
    assert ApiError("slow", code="upload_too_slow").http_status == 408
    assert DecodeError("empty", code="empty_input").http_status == 400
