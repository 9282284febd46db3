"""The prepared GPU check (issue 18, part 2): every GPU figure of this project, in one run.

    make gpu-check                                 # or: python -m benchmarks.gpu_check --out benchmarks
    python -m benchmarks.gpu_check --only pretraining loader
    python -m benchmarks.gpu_check --quick         # fewer steps and repeats (a smoke run)

On a machine with a CUDA GPU (written for one H100/H200, under 8 minutes, nothing downloaded:
models are randomly initialised, images generated) it measures:

- ``pretraining``: MSN + D step throughput (paper views: 224 px target, 1 x 224 + 10 x 96
  anchors, mask 0.15) of ViT-T and ViT-S at batch 64 in bf16, then the largest batch that fits,
  against the paper's ~520 and ~350 images/s on one A100 (goal: at least 2x on an H100/H200);
- ``loader``: the pretraining data loader alone (uint8 views, pinned, persistent workers) at
  2, 8 and 14 workers (capped at the usable cores), images/s;
- ``short_run``: a few hundred real steps of ViT-T on generated films through the training
  loop itself (``make_loader`` with ``data.num_workers`` at its default, ``run_epoch``) as 10
  short epochs: the loss of the last against the first, and whether the monitor statistics moved;
- ``syncs``: host/device synchronisations in a one-step profiler trace (cudaStreamSynchronize,
  cudaDeviceSynchronize, cudaEventSynchronize and blocking cudaMemcpy calls);
- ``inference``: ONNX Runtime CUDA fp32 and fp16, and TensorRT fp16 (from the fp32 file with
  the serving options) at batch 1 / 8 / 32, each labelled with the provider the session really
  runs on, and the largest absolute difference from CPU fp32 (does TensorRT fp16 hold up with
  ``trt_layer_norm_fp32_fallback``, which only matches decomposed LayerNorm?).

Each section is timed and its errors recorded, so one failure does not lose the others.
Writes ``benchmarks/results-gpu.json`` (``machine_info()`` plus the GPU, and every section's
rows) and ``benchmarks/results-gpu.md``. Without a CUDA GPU it says so, writes nothing and
exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import machine

SECTIONS = ("pretraining", "loader", "short_run", "syncs", "inference")
ARCHS = {"vit_t": "vit_tiny_patch16_224", "vit_s": "vit_small_patch16_224"}
#: MSN + D images/s on one A100 in the paper, per backbone, and the goal on an H100/H200.
PAPER_IMAGES_PER_S = {"vit_t": 520.0, "vit_s": 350.0}
GOAL_FACTOR = 2.0
INFERENCE_BATCHES = (1, 8, 32)
LOADER_WORKERS = (2, 8, 14)
DEVICE = "cuda"  # the sections' device; a smoke run of their code on a CPU may set "cpu"


def _device() -> Any:
    import torch

    return torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device(DEVICE)


def _synchronize() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def cuda_device() -> str | None:
    """The GPU's name, or None where torch sees no CUDA device (or torch is absent)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="where results-gpu.{json,md} go")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="these sections alone (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats: a smoke run")
    parser.add_argument("--archs", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS, reverse=True))
    parser.add_argument("--batch-size", type=int, default=64, help="pretraining batch (the paper's: 64)")
    parser.add_argument("--max-batch", type=int, default=1024, help="largest batch tried for 'fits'")
    parser.add_argument("--run-steps", type=int, default=300, help="steps of the short real run")
    parser.add_argument("--workers", type=int, nargs="+", default=list(LOADER_WORKERS))
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip sections once this is spent")
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.max_batch < args.batch_size:
        parser.error(f"need --batch-size >= 2 and --max-batch >= it; got {args.batch_size}, {args.max_batch}")
    if args.run_steps < 20 or min(args.workers) < 0:
        parser.error("need --run-steps >= 20 and --workers >= 0")
    args.sections = tuple(args.only or SECTIONS)
    return args


# -- results ----------------------------------------------------------------------------------


def write_results(out: Path, document: dict[str, Any], *, stem: str = "results-gpu") -> tuple[Path, Path]:
    """``stem``.json (the document as is) and ``stem``.md (the machine, then a table a section)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    md_path.write_text(markdown(document))
    return json_path, md_path


def markdown(document: dict[str, Any]) -> str:
    info = document["machine"]
    lines = [
        "# GPU check (`make gpu-check`)",
        "",
        f"GPU: {info.get('gpu', 'none')}; CUDA {info.get('cuda', '?')}, cuDNN {info.get('cudnn', '?')}.",
        f"Machine: {machine.describe(info)}",
    ]
    for name, section in document["sections"].items():
        lines += ["", f"## {name} ({section.get('seconds', 0):.0f} s)", ""]
        if section.get("error"):
            lines.append(f"Error: `{section['error']}`")
            continue
        if section.get("skipped"):
            lines.append(f"Skipped: {section['skipped']}")
            continue
        rows = section.get("rows", [])
        if not rows:
            lines.append("(no rows)")
            continue
        columns = list(dict.fromkeys(key for row in rows for key in row))
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |")
        for note in section.get("notes", []):
            lines += ["", note]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return str(value)


def run_sections(
    sections: dict[str, Callable[[], dict[str, Any]]],
    *,
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, dict[str, Any]]:
    """Each section's result with its seconds; an exception is recorded, not raised; sections
    after the budget is spent are skipped."""
    started = clock()
    results: dict[str, dict[str, Any]] = {}
    for name, section in sections.items():
        begun = clock()
        if begun - started > budget_s:
            results[name] = {"skipped": f"the {budget_s:.0f} s budget was spent", "seconds": 0.0}
            continue
        try:
            result = section()
        except Exception as exc:  # a failed section must not lose the others
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(clock() - begun, 1)
        results[name] = result
        print(f"[gpu-check] {name}: {result.get('error') or 'done'} in {result['seconds']} s", flush=True)
    return results


# -- GPU sections (not run in the tests: they need CUDA) ----------------------------------------


def _config(arch: str, batch_size: int, **overrides: str) -> Any:
    from training.config import apply_overrides
    from training.configs import paper_config

    settings = [f"model.arch={arch}", f"train.device={DEVICE}", "train.amp=true", "train.amp_dtype=bfloat16"]
    settings += [f"train.batch_size={batch_size}", *(f"{k}={v}" for k, v in overrides.items())]
    return apply_overrides(paper_config("vit_t", "D"), settings)


def _uint8_batch(config: Any, batch_size: int, ehr_dim: int) -> dict[str, Any]:
    """A loader-like batch: uint8 grey views in pinned memory, EHR features."""
    import torch

    views = config.views

    def pinned(tensor: Any) -> Any:
        return tensor.pin_memory() if DEVICE == "cuda" else tensor

    def grey(*shape: int) -> Any:
        return pinned(torch.randint(0, 256, shape, dtype=torch.uint8))

    return {
        "target": grey(batch_size, 1, views.target_size, views.target_size),
        "rand": grey(batch_size, views.rand_views, 1, views.rand_size, views.rand_size),
        "focal": grey(batch_size, views.focal_views, 1, views.focal_size, views.focal_size),
        "ehr": pinned(torch.rand(batch_size, ehr_dim)),
    }


def _parts(config: Any, ehr_dim: int, steps: int) -> Any:
    import torch

    from training.distributed import DistInfo
    from training.train_step import build_parts

    torch.manual_seed(0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=_device())
    return build_parts(config, ehr_dim=ehr_dim, steps_per_epoch=steps, dist_info=info)


def step_rate(arch: str, batch_size: int, *, steps: int, warmup: int) -> float:
    """Images/s of ``steps`` MSN + D steps (read every step's statistics only at the end)."""

    from training.train_step import run_step

    config = _config(arch, batch_size)
    parts = _parts(config, 3, steps + warmup)
    batch = _uint8_batch(config, batch_size, 3)
    for step in range(warmup):
        run_step(parts, batch, step).read()
    _synchronize()
    started = time.perf_counter()
    last = None
    for step in range(warmup, warmup + steps):
        last = run_step(parts, batch, step)
    assert last is not None
    last.read()
    _synchronize()
    return steps * batch_size / (time.perf_counter() - started)


def pretraining_section(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    steps, warmup = (5, 2) if args.quick else (20, 5)
    rows = []
    for short in args.archs:
        arch = ARCHS[short]
        rate = step_rate(arch, args.batch_size, steps=steps, warmup=warmup)
        paper = PAPER_IMAGES_PER_S[short]
        rows.append(
            {
                "arch": short,
                "batch": args.batch_size,
                "images_per_s": round(rate, 1),
                "paper_a100": paper,
                "vs_paper": round(rate / paper, 2),
                f"goal_{GOAL_FACTOR:g}x_met": rate >= GOAL_FACTOR * paper,
            }
        )
        largest, batch = None, args.batch_size * 2
        while batch <= args.max_batch:
            try:
                largest = (batch, round(step_rate(arch, batch, steps=3, warmup=1), 1))
            except torch.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
            batch *= 2
        if largest is not None:
            rows.append(
                {"arch": short, "batch": largest[0], "images_per_s": largest[1], "note": "largest tried"}
            )
    return {"rows": rows}


def _generated_cache(count: int, size: int, seed: int = 0) -> Any:
    """``count`` film-like uint8 [size, size] images: smooth anatomy-scale structure plus noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    axis = np.linspace(0.0, 1.0, size, dtype=np.float32)
    images = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.3)
        field = np.outer(np.sin(axis * fx * np.pi + phase), np.cos(axis * fy * np.pi))
        noise = rng.normal(0.0, 0.05, (size, size)).astype(np.float32)
        images[i] = np.clip((0.5 + 0.4 * field + noise) * 255, 0, 255).astype(np.uint8)
    return images


def _dataset(config: Any, count: int) -> Any:
    import numpy as np

    from training.data.dataset import PretrainDataset
    from training.msn.views import MultiViewTransform

    images = _generated_cache(count, config.data.cache_size)
    ehr = np.random.default_rng(0).random((count, 3)).astype(np.float32)
    return PretrainDataset(images, np.arange(count), MultiViewTransform(config.views, uint8=True), ehr)


def _loader(config: Any, dataset: Any, workers: int, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    from training.distributed import DistInfo
    from training.pretrain_data import loader_settings

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=_device())
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, **loader_settings(workers, info)
    )


def loader_section(args: argparse.Namespace) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    batches = 4 if args.quick else 12
    config = _config(ARCHS["vit_t"], args.batch_size)
    dataset = _dataset(config, args.batch_size * (batches + 2))
    rows = []
    for wanted in args.workers:
        workers = min(wanted, max(1, cores - 1))
        loader = _loader(config, dataset, workers, args.batch_size)
        iterator = iter(loader)
        next(iterator)  # workers started, first batch made
        started = time.perf_counter()
        count = 0
        for _ in range(batches):
            next(iterator)
            count += args.batch_size
        rate = count / (time.perf_counter() - started)
        rows.append(
            {
                "workers": workers,
                "asked": wanted,
                "images_per_s": round(rate, 1),
                "per_worker": round(rate / max(1, workers), 1),
                "feeds_vit_t_paper_rate": rate >= PAPER_IMAGES_PER_S["vit_t"],
            }
        )
        del iterator, loader
    return {"rows": rows, "notes": [f"{cores} usable cores; uint8 views, pinned, persistent workers."]}


class _Rows(list[dict[str, Any]]):
    """Stands in for the run folder's CSV logs (``training.pretrain.run_epoch`` appends rows)."""


class _NoBoard:
    """Stands in for TensorBoard's SummaryWriter."""

    def add_scalar(self, *args: Any) -> None:
        pass

    def flush(self) -> None:
        pass


def short_run_section(args: argparse.Namespace) -> dict[str, Any]:
    """``steps`` real steps through the training loop itself (``make_loader``: default workers,
    persistent, pinned; ``run_epoch``: statistics read every ``log_every`` steps and summed on
    the device), as 10 short epochs: the first epoch's means against the last's."""
    from training.distributed import DistInfo
    from training.early_stopping import EarlyStopping
    from training.pretrain import RunState, make_loader, run_epoch
    from training.pretrain_data import PretrainData, resolve_workers

    chunks = 10
    per_epoch = max(2, (60 if args.quick else args.run_steps) // chunks)
    # a 1-epoch (10 %) warm-up, then the cosine schedules over the run; data.num_workers unset
    overrides = {
        "train.log_every": "10",
        "train.epochs": str(chunks),
        "optim.warmup_epochs": "1",
        "train.progress": "false",
    }
    config = _config(ARCHS["vit_t"], args.batch_size, **overrides)
    dataset = _dataset(config, (per_epoch + 1) * args.batch_size)
    data = PretrainData(dataset=dataset, rows=[], manifest=Path("generated"), ehr=None, summary={})
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=_device())
    loader, sampler = make_loader(data, config, info)
    parts = _parts(config, 3, per_epoch)
    state = RunState(stopping=EarlyStopping(config.train.patience, config.train.min_delta))
    logs: dict[str, Any] = {"steps": _Rows(), "epochs": _Rows(), "tensorboard": _NoBoard()}
    while state.epoch < chunks:
        run_epoch(parts, loader, sampler, state, logs, info, per_epoch)
    early, late = state.history[0], state.history[-1]
    names = ("cross_entropy", "mean_entropy", "target_max", "agreement")
    moved = {name: round(late[name] - early[name], 4) for name in names}
    seconds = sum(record["seconds"] for record in state.history)
    rows = [
        {
            "steps": per_epoch * chunks,
            "batch": args.batch_size,
            "workers": resolve_workers(config.data.num_workers),
            "images_per_s": round(per_epoch * chunks * args.batch_size / seconds, 1),
            "images_per_s_last_epoch": late["images_per_s"],
            "loss_first_tenth": round(early["loss"], 4),
            "loss_last_tenth": round(late["loss"], 4),
            "loss_fell": late["loss"] < early["loss"],
            "monitor_moved": any(abs(value) > 1e-3 for value in moved.values()),
            "changes": moved,
        }
    ]
    return {
        "rows": rows,
        "log": list(logs["steps"]),
        "notes": [
            "Generated films (no data on the machine): a pipeline check, through the training loop "
            "(make_loader, run_epoch) with data.num_workers at its default."
        ],
    }


SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy ")


def count_sync_events(names: list[str]) -> dict[str, int]:
    """Trace event names -> counts of the synchronising CUDA runtime calls (``SYNC_EVENTS``;
    a plain cudaMemcpy blocks, cudaMemcpyAsync does not)."""
    counts = {name.strip(): 0 for name in SYNC_EVENTS}
    for name in names:
        for event in SYNC_EVENTS:
            if name == event.strip():
                counts[event.strip()] += 1
    return counts


def syncs_section(args: argparse.Namespace) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from training.train_step import run_step

    config = _config(ARCHS["vit_t"], args.batch_size)
    parts = _parts(config, 3, 10)
    batch = _uint8_batch(config, args.batch_size, 3)
    for step in range(3):
        run_step(parts, batch, step).read()
    _synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as prof:
        stats = run_step(parts, batch, 3)
    counts = count_sync_events([event.name for event in prof.events()])
    with profile(activities=activities) as read_prof:
        stats.read()
    read_counts = count_sync_events([event.name for event in read_prof.events()])
    return {
        "rows": [
            {"what": "one step (run_step)", **counts},
            {"what": "reading its statistics", **read_counts},
        ],
        "notes": ["Goal: none in the step; the read is the one place the host waits."],
    }


def inference_section(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.inputs import export_random_model
    from export.benchmark import benchmark_repository

    repeats, warmup = (5, 2) if args.quick else (30, 5)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        repository = export_random_model(ARCHS["vit_s"], Path(folder) / "model_repository")
        runs = [("cuda", ("fp32", "fp16"), "CUDA"), ("tensorrt", ("fp32",), "TensorRT fp16 from fp32")]
        for provider, variants, label in runs:
            try:
                timings = benchmark_repository(
                    repository,
                    batch_sizes=INFERENCE_BATCHES,
                    repeats=repeats,
                    warmup=warmup,
                    provider=provider,
                    variants=variants,
                )
            except Exception as exc:  # e.g. no TensorRT libraries: keep the CUDA rows
                rows.append({"run": label, "error": f"{type(exc).__name__}: {exc}"})
                continue
            for t in timings:
                rows.append(
                    {
                        "run": label,
                        "variant": t.variant,
                        "provider": t.provider,
                        "batch": t.batch_size,
                        "median_ms": round(t.median_ms, 3),
                        "images_per_s": round(t.images_per_s, 1),
                        "max_abs_diff_vs_cpu_fp32": t.max_abs_diff_vs_cpu_fp32 or {},
                    }
                )
    return {"rows": rows, "notes": ["ViT-S/16 at 224 px, randomly initialised; inputs standard normal."]}


def gpu_info() -> dict[str, Any]:
    import torch

    properties = torch.cuda.get_device_properties(0)
    return {
        "gpu": f"{properties.name} ({properties.total_memory / 2**30:.0f} GiB)",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu_count": torch.cuda.device_count(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = cuda_device()
    if name is None:
        print("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured.")
        return 0
    print(f"gpu-check on {name}: sections {', '.join(args.sections)}", flush=True)
    makers: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "pretraining": pretraining_section,
        "loader": loader_section,
        "short_run": short_run_section,
        "syncs": syncs_section,
        "inference": inference_section,
    }
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        section: partial(makers[section], args) for section in args.sections
    }
    results = run_sections(sections, budget_s=args.budget_s)
    document = {"machine": machine.machine_info() | gpu_info(), "args": vars(args), "sections": results}
    json_path, md_path = write_results(args.out, document)
    print(markdown(document))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
