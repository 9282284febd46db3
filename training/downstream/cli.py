"""Options shared by the downstream commands (linear-eval, finetune, evaluate)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.downstream.config import CONFIGS, DownstreamConfig, config_to_dict, named_config


def add_config_arguments(parser: argparse.ArgumentParser, *, default: str = "paper") -> None:
    parser.add_argument(
        "--config",
        default=default,
        help=f"a named downstream config: {', '.join(sorted(CONFIGS))} (default {default}); "
        "smoke = the protocol, briefly, on a small subset of ../shared/data",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        help="a manifest CSV (build-manifest); sets data.source=manifest and data.manifest",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. labels.uncertain=ignore augment.copies=8 head.max_epochs=20 "
        "data.source=encoder data.workers=2 metrics.threshold=f1 (see --print-config for every key)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )


def resolve_config(args: argparse.Namespace) -> DownstreamConfig:
    from training.config import apply_overrides

    overrides = list(args.overrides)
    if args.manifest is not None:
        overrides += ["data.source=manifest", f"data.manifest={args.manifest}"]
    return apply_overrides(named_config(args.config), overrides)


def config_for_run(args: argparse.Namespace, *, source: str) -> DownstreamConfig | None:
    """The resolved config, or None once it has been printed for --print-config.

    ``source`` names the positional argument (``encoder``, ``classifier``) that, with --out,
    a real run needs; ValueError when either is missing.
    """
    config = resolve_config(args)
    if args.print_config:
        print_config(config)
        return None
    if getattr(args, source) is None or args.out is None:
        raise ValueError(f"{source.upper()} and --out DIR are required")
    return config


def print_config(config: DownstreamConfig) -> None:
    print(json.dumps(config_to_dict(config), indent=2))


def fail(command: str, exc: Exception) -> int:
    print(f"cxr-msn {command}: error: {exc}", file=sys.stderr)
    return 2
