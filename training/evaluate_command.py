"""External validation: apply a trained classifier, unchanged, to one split of another manifest.

Examples:
  cxr-msn build-manifest chexpert --root /data/CheXpert-v1.0-small --out chexpert.csv
  cxr-msn evaluate runs/mimic-linear/classifier.safetensors --manifest chexpert.csv --out runs/on-chexpert
  cxr-msn build-manifest chexpert --root /data/CheXpert-v1.0-small \
      --test-csv /data/chexpert-test/test_labels.csv --out chexpert-test.csv   # the 500-patient test set
  cxr-msn evaluate runs/nih-linear/classifier.safetensors --manifest nih.csv \
      --nih-findings /data/nih/Data_Entry_2017.csv --out runs/nih-eval       # also NIH's own findings
  cxr-msn evaluate runs/smoke-linear/classifier.safetensors --config smoke --out runs/smoke-eval

The images are decoded and preprocessed exactly as serving does (the classifier's stored
preprocessing). Metrics cover the classifier's trained labels that are estimable on the split
(labels under the configured policy, `labels.*`), with 95 % bootstrap CIs; each saved
threshold's sensitivity, specificity and precision are reported too. With --nih-findings,
metrics.json also holds `nih_findings`: NIH's own 14 findings, each scored by the classifier's
matching CheXpert head (nine can be; the five without a head are reported as not estimable).
OUT gets metrics.json, predictions/test.npz, config.json and version.json (`cxr-msn report
OUT` and `cxr-msn compare` read them).
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
    parser.add_argument(
        "--nih-findings",
        type=Path,
        help="NIH's Data_Entry_2017.csv (or nih1000/labels.csv): also score NIH's own 14 findings",
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from training.downstream.cli import config_for_run, fail

    try:
        config = config_for_run(args, source="classifier")
        if config is None:
            return 0
        from training.downstream.evaluate import evaluate_classifier
        from training.downstream.run_metrics import RunMetrics

        metrics = RunMetrics.from_json(
            evaluate_classifier(
                args.classifier, config, args.out, split=args.split, nih_findings=args.nih_findings
            )
        )
    except (ValueError, FileNotFoundError) as exc:
        return fail("evaluate", exc)
    macro = metrics.macro("test")
    summary = {
        "images": metrics.split("test")["images"],
        "macro_auroc": macro["auroc"],
        "macro_auprc": macro["auprc"],
        "macro_labels": macro["labels"],
    }
    if "nih_findings" in metrics.details:
        nih = metrics.details["nih_findings"]["macro"]
        summary |= {"nih_macro_auroc": nih["auroc"], "nih_macro_findings": nih["labels"]}
    print(json.dumps(summary))
    return 0
