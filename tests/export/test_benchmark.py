"""The latency benchmark over a repository's variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.benchmark import benchmark_repository, main, summarise


def test_times_every_variant_at_each_batch_size(nano_repository: Path) -> None:
    timings = benchmark_repository(nano_repository, batch_sizes=(1, 2), repeats=3, warmup=1)
    assert [(t.variant, t.batch_size) for t in timings] == [
        (variant, batch) for variant in ("fp16", "fp32", "int8") for batch in (1, 2)
    ] or sorted((t.variant, t.batch_size) for t in timings) == sorted(
        (variant, batch) for variant in ("fp16", "fp32", "int8") for batch in (1, 2)
    )
    for timing in timings:
        assert 0 < timing.median_ms <= timing.p90_ms
        assert timing.images_per_s == pytest.approx(1e3 * timing.batch_size / timing.median_ms)
        assert timing.max_abs_diff_vs_cpu_fp32 is None


def test_summary_is_the_median_and_90th_percentile() -> None:
    timing = summarise("fp32", 4, [0.004, 0.001, 0.002, 0.003, 0.010])
    assert timing.median_ms == pytest.approx(3.0) and timing.p90_ms == pytest.approx(10.0)
    assert timing.images_per_s == pytest.approx(4 / 0.003)


def test_command_line_prints_json_lines(nano_repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main([str(nano_repository), "--variants", "int8", "--batch-sizes", "1", "--repeats", "2", "--json"])
        == 0
    )
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["variant"] == "int8"


def test_bad_arguments_are_refused(nano_repository: Path) -> None:
    with pytest.raises(ValueError, match="provider must be one of"):
        benchmark_repository(nano_repository, provider="tpu")
    with pytest.raises(ValueError, match="not in the manifest"):
        benchmark_repository(nano_repository, variants=("fp64",))
