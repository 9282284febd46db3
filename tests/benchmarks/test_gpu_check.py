"""The GPU check's CPU-side parts: arguments, the CPU-only exit, sections that fail or run
out of time, the sync count from trace event names, and the results files. The GPU sections
themselves are not run here (no CUDA)."""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gpu_check


def test_defaults_are_the_issues_measurements() -> None:
    args = gpu_check.parse_args([])
    assert args.sections == gpu_check.SECTIONS
    assert args.batch_size == 64 and args.workers == [2, 8, 14] and args.run_steps >= 200
    assert sorted(args.archs) == ["vit_s", "vit_t"] and args.out == Path("benchmarks")
    assert gpu_check.INFERENCE_BATCHES == (1, 8, 32)
    assert gpu_check.PAPER_IMAGES_PER_S == {"vit_t": 520.0, "vit_s": 350.0}
    only = gpu_check.parse_args(["--only", "loader", "syncs", "--quick", "--out", "x"])
    assert only.sections == ("loader", "syncs") and only.quick and only.out == Path("x")


@pytest.mark.parametrize(
    "argv",
    [
        ["--only", "dance"],
        ["--batch-size", "1"],
        ["--batch-size", "64", "--max-batch", "32"],
        ["--run-steps", "5"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(argv)
    assert exit_info.value.code == 2


def test_without_a_gpu_it_says_so_writes_nothing_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_check, "cuda_device", lambda: None)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_this_machine_is_detected_as_it_is() -> None:
    import torch

    assert (gpu_check.cuda_device() is None) == (not torch.cuda.is_available())


def test_a_failing_section_is_recorded_and_the_others_still_run() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("no TensorRT")

    results = gpu_check.run_sections({"a": broken, "b": lambda: {"rows": [{"x": 1}]}}, budget_s=100)
    assert results["a"]["error"] == "RuntimeError: no TensorRT"
    assert results["b"]["rows"] == [{"x": 1}] and "seconds" in results["b"]


def test_sections_after_the_budget_are_skipped() -> None:
    ticks = count(0, 100)  # each clock reading is 100 s later
    results = gpu_check.run_sections(
        {"a": lambda: {"rows": []}, "b": lambda: {"rows": []}, "c": lambda: {"rows": []}},
        budget_s=150,
        clock=lambda: float(next(ticks)),
    )
    assert "skipped" not in results["a"] and "skipped" in results["c"]


def test_sync_events_are_counted_by_exact_name() -> None:
    names = ["cudaStreamSynchronize", "cudaMemcpyAsync", "cudaMemcpy", "aten::copy_", "cudaStreamSynchronize"]
    counts = gpu_check.count_sync_events(names)
    assert counts == {
        "cudaStreamSynchronize": 2,
        "cudaDeviceSynchronize": 0,
        "cudaEventSynchronize": 0,
        "cudaMemcpy": 1,  # the blocking copy; cudaMemcpyAsync is not one
    }


def _document() -> dict[str, Any]:
    from benchmarks.machine import machine_info

    return {
        "machine": machine_info() | {"gpu": "Fake H200 (139 GiB)", "cuda": "13.0", "cudnn": 91000},
        "args": {"out": Path("x")},
        "sections": {
            "pretraining": {
                "rows": [{"arch": "vit_t", "batch": 64, "images_per_s": 1234.5, "goal_2x_met": True}],
                "seconds": 12.0,
            },
            "inference": {"error": "ProviderFallback: asked for CUDA", "seconds": 1.0},
            "syncs": {"skipped": "the 480 s budget was spent", "seconds": 0.0},
            "short_run": {
                "rows": [{"loss_fell": True, "changes": {"agreement": 0.25}}],
                "notes": ["Generated films."],
                "seconds": 30.0,
            },
        },
    }


def test_results_are_written_as_json_and_markdown(tmp_path: Path) -> None:
    json_path, md_path = gpu_check.write_results(tmp_path / "out", _document())
    assert (json_path.name, md_path.name) == ("results-gpu.json", "results-gpu.md")
    stored = json.loads(json_path.read_text())
    assert stored["machine"]["cpu"]["model"] and stored["machine"]["gpu"].startswith("Fake H200")
    assert stored["sections"]["pretraining"]["rows"][0]["images_per_s"] == 1234.5
    assert stored["args"]["out"] == "x"
    text = md_path.read_text()
    assert "GPU: Fake H200 (139 GiB); CUDA 13.0" in text and "Machine: " in text
    assert "| arch | batch | images_per_s | goal_2x_met |" in text and "| vit_t | 64 | 123" in text
    assert "Error: `ProviderFallback: asked for CUDA`" in text and "Skipped: the 480 s budget" in text
    assert "agreement 0.25" in text and "Generated films." in text


def test_main_on_a_gpu_writes_every_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gpu_check, "cuda_device", lambda: "Fake GPU")
    monkeypatch.setattr(gpu_check, "gpu_info", lambda: {"gpu": "Fake GPU"})
    seen: list[str] = []
    for name in gpu_check.SECTIONS:

        def section(args: Any, name: str = name) -> dict[str, Any]:
            seen.append(name)
            assert args.batch_size == 32
            return {"rows": [{"section": name}]}

        monkeypatch.setattr(gpu_check, f"{name}_section", section)
    assert gpu_check.main(["--out", str(tmp_path), "--batch-size", "32"]) == 0
    assert seen == list(gpu_check.SECTIONS)
    stored = json.loads((tmp_path / "results-gpu.json").read_text())
    assert list(stored["sections"]) == list(gpu_check.SECTIONS)
    assert "wrote" in capsys.readouterr().out


# -- the sections' code on a CPU at toy sizes (proves the code paths, not GPU figures) ----------


def _toy(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.config import apply_overrides

    real = gpu_check._config

    def tiny(arch: str, batch_size: int, **overrides: str) -> Any:
        toy = [
            "model.arch=vit_nano_patch16_224",
            "views.target_size=32",
            "views.rand_size=32",
            "views.focal_size=16",
            "views.focal_views=2",
            "data.cache_size=48",
            "loss.num_prototypes=16",
        ]
        return apply_overrides(real(arch, batch_size, **overrides), toy)

    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check, "_config", tiny)


@pytest.mark.slow
def test_the_short_run_goes_through_the_training_loop_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.pretrain

    _toy(monkeypatch)
    epochs: list[int] = []
    real_epoch = training.pretrain.run_epoch

    def counted(*args: Any) -> bool:
        epochs.append(args[3].epoch)
        return real_epoch(*args)

    monkeypatch.setattr(training.pretrain, "run_epoch", counted)
    args = gpu_check.parse_args(["--quick", "--batch-size", "4"])
    result = gpu_check.short_run_section(args)
    assert epochs == list(range(10))  # the loop's own run_epoch, 10 short epochs
    (row,) = result["rows"]
    assert row["steps"] == 60 and row["batch"] == 4 and row["workers"] >= 1
    assert set(row["changes"]) == {"cross_entropy", "mean_entropy", "target_max", "agreement"}
    assert isinstance(row["loss_fell"], bool) and row["images_per_s"] > 0
    assert [r["step"] for r in result["log"]][:3] == [0, 5, 10]  # log_every 10 and each epoch's last


def test_the_pretraining_and_sync_sections_run_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _toy(monkeypatch)
    args = gpu_check.parse_args(["--quick", "--batch-size", "4", "--max-batch", "8", "--archs", "vit_t"])
    rows = gpu_check.pretraining_section(args)["rows"]
    assert [r["batch"] for r in rows] == [4, 8] and rows[0]["images_per_s"] > 0
    syncs = gpu_check.syncs_section(args)["rows"]
    assert [r["what"] for r in syncs] == ["one step (run_step)", "reading its statistics"]
