"""Fuzzing the decoder: a short real atheris run, and every past crash as a regression."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cxrmsn.errors import DecodeError
from cxrmsn.imaging import decode

REGRESSIONS = sorted((Path(__file__).parent / "regressions").iterdir())
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_past_fuzzing_crashes_raise_typed_errors(path: Path) -> None:
    try:
        image = decode(path.read_bytes())
    except DecodeError as error:
        assert 400 <= error.http_status < 500
    else:
        assert 0.0 <= float(image.pixels.min()) <= float(image.pixels.max()) <= 1.0


def test_short_fuzzing_run_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (the dev extra has it)")
    seeds = tmp_path / "seeds"
    module = "tests.fuzz.fuzz_decode"
    subprocess.run([sys.executable, "-m", module, "--write-seeds", str(seeds)], check=True, cwd=REPO_ROOT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            "-runs=4000",
            "-seed=1",  # reproducible here; longer runs (docs/reliability.md) explore freely
            "-rss_limit_mb=4096",
            f"-artifact_prefix={tmp_path}/",
            str(seeds),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    crashes = list(tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, result.stderr[-3000:]
    # libFuzzer may finish a few runs past -runs (seen: 4004 when a run found new coverage)
    done = re.search(r"Done (\d+) runs", result.stderr)
    assert done is not None and int(done[1]) >= 4000, result.stderr[-2000:]
