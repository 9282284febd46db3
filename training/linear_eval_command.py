"""Linear evaluation of a pretrained encoder: the paper's protocol as one command.

Examples:
  cxr-msn linear-eval runs/smoke --config smoke --out runs/smoke-linear
  cxr-msn linear-eval runs/vit_t-D/checkpoints/encoder.safetensors --manifest mimic.csv --out runs/t-D-lin
  cxr-msn linear-eval runs/vit_t-D --set data.source=encoder --out runs/vit_t-D-linear
  cxr-msn linear-eval ENCODER --manifest nih.csv --out runs/nih-linear   # a head trained and tested on NIH

The frozen EMA target encoder (of the last epoch, or with --weights best_loss of the best
training-loss epoch) embeds every image once (cached under data.cache_dir); five linear heads
are trained (lr 1e-3, 5e-4, 1e-4 cosine + early stopping; 5e-4, 1e-4 ReduceLROnPlateau, factor
0.5, patience 3), the best on validation macro AUROC is kept (or, with head.solver=logistic,
per-label L2 logistic regressions), and the test split is reported with 95 % bootstrap CIs.
OUT gets classifier.safetensors (what `cxr-msn export` reads), metrics.json,
predictions/{valid,test}.npz, config.json and version.json.
Labels (--config paper, the default): blank and uncertain (-1) labels are 0, as the paper's
code; --config masked masks blanks out of the loss and of every metric instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.downstream.run_metrics import RunMetrics

HELP = "linear evaluation of a frozen encoder (the paper's five runs), writes the classifier and metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.downstream.cli import add_config_arguments

    parser.add_argument(
        "encoder",
        type=Path,
        nargs="?",
        help="an encoder checkpoint (kind encoder), or a pretraining run folder: its "
        "checkpoints/encoder.safetensors",
    )
    parser.add_argument(
        "--weights",
        choices=("last", "best_loss"),
        default="last",
        help="for a run folder: the last epoch's encoder (checkpoints/encoder.safetensors) or the best "
        "training-loss epoch's (checkpoints/encoder_best_loss.safetensors, the paper's choice)",
    )
    parser.add_argument("--out", type=Path, help="the folder to write (must not hold a metrics.json)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from training.downstream.cli import config_for_run, fail

    try:
        config = config_for_run(args, source="encoder")
        if config is None:
            return 0
        from training.downstream.embeddings import resolve_encoder_path
        from training.downstream.linear_eval import linear_eval

        metrics = linear_eval(resolve_encoder_path(args.encoder, args.weights), config, args.out)
    except ValueError as exc:
        return fail("linear-eval", exc)
    print(json.dumps(headline(RunMetrics.from_json(metrics))))
    return 0


def headline(metrics: RunMetrics) -> dict[str, Any]:
    """The one-line summary printed at the end."""
    macro = metrics.macro("test")
    return {
        "protocol": metrics.protocol,
        "selected_run": metrics.selected_run,
        "test_macro_auroc": macro["auroc"],
        "test_macro_auprc": macro["auprc"],
        "macro_labels": macro["labels"],
        "trained_labels": metrics.trained_labels,
    }
