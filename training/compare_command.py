"""Paired comparison of two models' predictions on the same test images.

Examples:
  cxr-msn compare runs/exp/vit_t-D/linear runs/exp/vit_t-vanilla/linear
  cxr-msn compare RUN_A RUN_B --out a_vs_b.json --resamples 2000

RUN_A and RUN_B are --out folders of linear-eval, finetune (fraction_<f>/) or evaluate; their
predictions/test.npz must hold the same images with the same labels. Reports the macro AUROC
of each over the labels both can score, the difference A - B with a paired bootstrap 95 % CI
and two-sided p-value (the same image resamples for both models), and a paired Student t-test
over those labels' AUROCs (what the t-test is over: see training/downstream/metrics.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "paired bootstrap + paired t-test of two models' macro AUROC on the same test images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", type=Path, help="model A's output folder (metrics.json, predictions/)")
    parser.add_argument("run_b", type=Path, help="model B's output folder (the reference)")
    parser.add_argument("--out", type=Path, help="also write the comparison to this JSON file")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")


def run(args: argparse.Namespace) -> int:
    from training.downstream.cli import fail
    from training.downstream.compare import compare_runs
    from training.downstream.metrics import BootstrapSettings

    try:
        settings = BootstrapSettings(resamples=args.resamples, seed=args.seed)
        result = compare_runs(args.run_a, args.run_b, settings=settings)
    except ValueError as exc:
        return fail("compare", exc)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        from cxrmsn.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0
