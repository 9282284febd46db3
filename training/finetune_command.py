"""Fine-tune a pretrained encoder and a linear head together on fractions of the training labels.

Examples:
  cxr-msn finetune runs/smoke --config smoke --out runs/smoke-finetune
  cxr-msn finetune runs/vit_t-D --set data.source=encoder --out runs/vit_t-D-finetune
  cxr-msn finetune ENCODER --manifest mimic.csv --out runs/ft --set finetune.fractions=0.01,0.1

  cxr-msn finetune runs/small-D --config smoke --runs single --out runs/ft-cpu   # one run per fraction

For each fraction (default 1 %, 5 %, 10 %, 100 %) the training split is cut down by whole
patients (seeded); the encoder is unfrozen. --runs grid (default, the paper's): the five runs
of linear evaluation (head.cosine_lrs with cosine annealing and early stopping on the
validation macro AUROC, head.plateau_lrs with ReduceLROnPlateau), the best on validation kept;
--runs single: one cosine run at finetune.lr (a fifth of the cost, for CPU budgets).
OUT/fraction_<f>/ holds classifier.safetensors, metrics.json (every run's history) and
predictions/ as linear-eval writes them; OUT/summary.{json,md} tabulate the fractions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "fine-tune encoder + head on 1, 5, 10 and 100 percent of the training labels (patient-level), "
    "the paper's five-run grid per fraction"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.downstream.cli import add_config_arguments

    parser.add_argument(
        "encoder",
        type=Path,
        nargs="?",
        help="an encoder checkpoint (kind encoder), or a pretraining run folder",
    )
    parser.add_argument("--out", type=Path, help="the folder to write (must not hold a summary.json)")
    parser.add_argument(
        "--runs",
        choices=("grid", "single"),
        default="grid",
        help="grid: the paper's five runs per fraction (the head section's lrs and schedules), the best "
        "on validation kept; single: one cosine run at finetune.lr (for CPU budgets)",
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from training.downstream.cli import config_for_run, fail

    try:
        config = config_for_run(args, source="encoder")
        if config is None:
            return 0
        from training.downstream.finetune import finetune, summary_markdown

        summary = finetune(args.encoder, config, args.out, runs=args.runs)
    except ValueError as exc:
        return fail("finetune", exc)
    print(summary_markdown(summary["fractions"]), end="")
    return 0
