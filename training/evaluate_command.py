"""External validation: apply a trained classifier, unchanged, to one split of another manifest.

Examples:
  cxr-msn build-manifest chexpert --root /data/CheXpert-v1.0-small --out chexpert.csv
  cxr-msn evaluate runs/mimic-linear/classifier.safetensors --manifest chexpert.csv --out runs/on-chexpert
  cxr-msn evaluate runs/smoke-linear/classifier.safetensors --config smoke --out runs/smoke-eval

The images are decoded and preprocessed exactly as serving does. Metrics cover the
classifier's trained labels that are estimable on the split (blanks masked, as everywhere),
with 95 % bootstrap CIs; each saved threshold's sensitivity, specificity and precision are
reported too. OUT gets metrics.json, predictions/test.npz, config.json and version.json
(`cxr-msn report OUT` and `cxr-msn compare` read them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "external validation: a trained classifier on another manifest's test split, with CIs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.downstream.cli import add_config_arguments

    parser.add_argument("classifier", type=Path, nargs="?", help="a classifier checkpoint (kind classifier)")
    parser.add_argument("--out", type=Path, help="the folder to write (must not hold a metrics.json)")
    parser.add_argument(
        "--split", default="test", choices=("train", "valid", "test"), help="the split to evaluate on"
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from training.downstream.cli import config_for_run, fail

    try:
        config = config_for_run(args, source="classifier")
        if config is None:
            return 0
        from training.downstream.evaluate import evaluate_classifier

        metrics = evaluate_classifier(args.classifier, config, args.out, split=args.split)
    except ValueError as exc:
        return fail("evaluate", exc)
    macro = metrics["test"]["macro"]
    print(
        json.dumps(
            {
                "images": metrics["test"]["images"],
                "macro_auroc": macro["auroc"],
                "macro_auprc": macro["auprc"],
                "macro_labels": macro["labels"],
            }
        )
    )
    return 0
