"""Atomic writes: all or nothing, readable modes, no temporary files left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cxrmsn.fileio import atomic_write_bytes, atomic_write_text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_files_follow_the_umask_not_mkstemps_0600(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "nested" / "report.html"
    previous = os.umask(umask)
    try:
        atomic_write_text(target, "<p>ok</p>")
    finally:
        os.umask(previous)
    assert target.read_text() == "<p>ok</p>" and mode(target) == 0o666 & ~umask
    assert [path.name for path in target.parent.iterdir()] == ["report.html"]


def test_replacing_keeps_the_existing_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    target.write_text("old")
    target.chmod(0o600)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["state.json"]
