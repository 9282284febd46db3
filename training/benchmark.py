"""Pretraining-step throughput: images per second of ``training.train_step.train_step``.

Times the real step (masked anchor views + EHR through the anchor network, target view
through the EMA target, MSN loss, AdamW, EMA update) on synthetic views of the paper's
sizes, so data loading is excluded. One image = 1 target view + all its anchor views.

  python -m training.benchmark --arch vit_tiny_h6_patch16_224 vit_small_patch16_224 --batch-size 16
  python -m training.benchmark --device cuda --amp --batch-size 64     # on a GPU

Prints one JSON line per architecture.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from training.config import PretrainConfig, apply_overrides
from training.distributed import DistInfo, resolve_device
from training.run_folder import peak_memory_mb
from training.train_step import TrainParts, build_parts, train_step


def synthetic_batch(config: PretrainConfig, batch_size: int, ehr_dim: int) -> dict[str, torch.Tensor]:
    views = config.views
    return {
        "target": torch.randn(batch_size, 3, views.target_size, views.target_size),
        "rand": torch.randn(batch_size, views.rand_views, 3, views.rand_size, views.rand_size),
        "focal": torch.randn(batch_size, views.focal_views, 3, views.focal_size, views.focal_size),
        "ehr": torch.rand(batch_size, ehr_dim),
    }


def benchmark(
    config: PretrainConfig, *, batch_size: int, steps: int, warmup: int, ehr_dim: int
) -> dict[str, Any]:
    """Median and mean images/s over ``steps`` timed steps after ``warmup`` untimed ones."""
    if steps < 1 or warmup < 0 or batch_size < 2:
        raise ValueError(
            f"need steps >= 1, warmup >= 0, batch_size >= 2; got {steps}, {warmup}, {batch_size}"
        )
    device = resolve_device(config.train.device)
    torch.manual_seed(config.train.seed)
    parts = build_parts(
        config,
        ehr_dim=ehr_dim,
        steps_per_epoch=steps + warmup,
        dist_info=DistInfo(rank=0, world_size=1, local_rank=0, device=device),
    )
    batch = synthetic_batch(config, batch_size, ehr_dim)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = [_timed_step(parts, batch, step) for step in range(warmup + steps)][warmup:]
    rates = [batch_size / s for s in seconds]
    return {
        "arch": config.model.arch,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "amp": None if parts.amp_dtype is None else str(parts.amp_dtype),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "views": f"1x{config.views.target_size} target + {config.views.rand_views}x{config.views.rand_size} "
        f"+ {config.views.focal_views}x{config.views.focal_size} anchors, mask {config.mask.ratio}",
        "ehr_dim": ehr_dim,
        "steps": steps,
        "images_per_s_median": round(statistics.median(rates), 2),
        "images_per_s_mean": round(steps * batch_size / sum(seconds), 2),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if device.type == "cuda"
        else None,
        **peak_memory_mb(),
    }


def _timed_step(parts: TrainParts, batch: dict[str, torch.Tensor], step: int) -> float:
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    started = time.perf_counter()
    train_step(parts, batch, step)
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.benchmark", description=__doc__)
    parser.add_argument("--arch", nargs="+", default=["vit_tiny_h6_patch16_224", "vit_small_patch16_224"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--ehr-dim", type=int, default=3, help="EHR input size (3: D = age + sex); 0: vanilla"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE"
    )
    args = parser.parse_args(argv)
    for arch in args.arch:
        config = apply_overrides(
            PretrainConfig(name="benchmark"),
            [f"model.arch={arch}", f"train.device={args.device}", f"train.amp={args.amp}", *args.overrides],
        )
        result = benchmark(
            config, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, ehr_dim=args.ehr_dim
        )
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
