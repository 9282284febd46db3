"""Pretrain a ViT encoder with multimodal MSN (MSN + static EHR), or a DINO / MAE baseline.

Examples:
  cxr-msn pretrain --config smoke --out runs/smoke
  cxr-msn pretrain --config vit_t-D --manifest mimic.csv --out runs/vit_t-D --set optim.lr=5e-4
  cxr-msn pretrain --config small-dino --out runs/small-dino        # the DINO baseline (method=dino)
  cxr-msn pretrain --config vit_t-mae --manifest mimic.csv --out runs/vit_t-mae
  cxr-msn pretrain --out runs/vit_t-D --resume
  torchrun --nproc-per-node 8 -m training pretrain --config vit_s-all --manifest mimic.csv --out runs/s-all

Two encoders are written in the core checkpoint format (kind "encoder"):
OUT/checkpoints/encoder.safetensors (the last epoch, what `linear-eval OUT` reads) and
OUT/checkpoints/encoder_best_loss.safetensors (the epoch of the lowest training loss, what the
paper's early stopping kept; pass that file to linear-eval to use it). Each records its epoch
(metrics.epoch) and choice (extra.selection). The encoder is the EMA target's for MSN, the EMA
teacher's for DINO and the trained one for MAE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import PretrainConfig

HELP = "multimodal MSN (or DINO / MAE baseline) pretraining of a ViT encoder (named configs, resume, DDP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="a named config (see --list-configs), e.g. smoke, vit_t-D, vit_s-all, small-dino"
    )
    parser.add_argument("--out", type=Path, help="the run folder to create (or to continue with --resume)")
    parser.add_argument("--manifest", type=Path, help="a manifest CSV (build-manifest); sets data.manifest")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. optim.lr=5e-4 mask.per_sample=false ehr.features=age,sex",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument("--list-configs", action="store_true", help="print the named configs and exit")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )


def resolve_config(args: argparse.Namespace) -> PretrainConfig:
    from training.config import apply_overrides
    from training.configs import named_config

    if not args.config:
        raise ValueError("--config NAME is required (see --list-configs)")
    overrides = list(args.overrides)
    if args.manifest is not None:
        overrides += ["data.source=manifest", f"data.manifest={args.manifest}"]
    return apply_overrides(named_config(args.config), overrides)


def run(args: argparse.Namespace) -> int:
    from training.configs import config_names

    if args.list_configs:
        print("\n".join(config_names()))
        return 0
    try:
        summary = _run(args)
    except ValueError as exc:
        print(f"cxr-msn pretrain: error: {exc}", file=sys.stderr)
        return 2
    if summary is not None:
        print(
            json.dumps(
                {
                    k: summary[k]
                    for k in ("epochs", "finished", "final_loss", "best_loss", "encoder", "encoder_best_loss")
                }
            )
        )
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any] | None:
    from training.config import to_dict

    if args.resume:
        if args.config or args.overrides or args.manifest:
            raise ValueError(
                "--resume continues with the run folder's config.json: drop --config, --set, --manifest"
            )
        if args.out is None:
            raise ValueError("--out DIR is required")
        from training.pretrain import resume

        return resume(args.out)
    config = resolve_config(args)
    if args.print_config:
        print(json.dumps(to_dict(config), indent=2))
        return None
    if args.out is None:
        raise ValueError("--out DIR is required")
    from training.pretrain import pretrain

    return pretrain(config, args.out)
