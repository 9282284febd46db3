"""Build a manifest CSV (training.data.manifest) from a data set's own files.

Examples:
  cxr-msn build-manifest shared --root ../shared/data --out runs/shared.csv
  cxr-msn build-manifest nih --root /data/nih --out nih.csv
  cxr-msn build-manifest chexpert --root /data/CheXpert-v1.0-small --out chexpert.csv
  cxr-msn build-manifest chexpert --root /data/CheXpert-v1.0-small \
      --test-csv /data/chexpert-test/test_labels.csv --out chexpert-test.csv
  cxr-msn build-manifest mimic --root /data/mimic-cxr-jpg/2.1.0 --mimic-iv-root /data/mimiciv/3.1 \
      --out mimic.csv
  cxr-msn build-manifest mimic --root /data/mimic-cxr-jpg/2.1.0 --mimic-iv-root /data/mimiciv/3.1 \
      --split-file /data/medfuse/mimic-cxr-ehr-split.csv --out mimic-paper.csv   # the paper's split

Splits are always by patient. Prints a summary (images and patients per split, and which
split was used) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.data.manifest import ManifestRow

HELP = "build a manifest CSV from MIMIC-CXR-JPG + MIMIC-IV, CheXpert, NIH or ../shared/data"
SOURCES = ("shared", "nih", "chexpert", "mimic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=SOURCES, help="which data set's layout --root holds")
    parser.add_argument(
        "--root", type=Path, required=True, help="the data set's folder (MIMIC: MIMIC-CXR-JPG)"
    )
    parser.add_argument("--mimic-iv-root", type=Path, help="MIMIC-IV folder with hosp/ and icu/ (mimic only)")
    parser.add_argument(
        "--split-file",
        type=Path,
        help="mimic only: a split file in MIMIC-CXR's layout (dicom_id, split = train/validate/test) "
        "instead of the official split, e.g. MedFuse's mimic-cxr-ehr-split.csv (the paper's)",
    )
    parser.add_argument(
        "--test-csv",
        type=Path,
        help="chexpert only: the labelled file that becomes the test split, e.g. the CheXpert test "
        "set's test_labels.csv (image paths relative to its folder); default: ROOT/valid.csv",
    )
    parser.add_argument("--out", type=Path, required=True, help="the manifest CSV to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level splits made here")
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="share of training patients moved to valid (nih with official lists, chexpert)",
    )


def run(args: argparse.Namespace) -> int:
    from training.data.manifest import write_manifest

    try:
        rows = _build(args)
        write_manifest(args.out, rows)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cxr-msn build-manifest: error: {exc}", file=sys.stderr)
        return 2
    images = Counter(row.split for row in rows)
    patients = Counter(split for _, split in {((r.dataset, r.patient_id), r.split) for r in rows})
    summary = {
        "manifest": str(args.out),
        "images": dict(images),
        "patients": dict(patients),
        "split": split_description(args),
    }
    print(json.dumps(summary))
    return 0


def split_description(args: argparse.Namespace) -> str:
    """Which split the manifest holds, in words (the summary's ``split``)."""
    if args.source == "mimic":
        if args.split_file is None:
            return "official MIMIC-CXR split (mimic-cxr-2.0.0-split.csv)"
        return f"split file {args.split_file} (not the official MIMIC-CXR split)"
    if args.source == "chexpert":
        test = args.root / "valid.csv" if args.test_csv is None else args.test_csv
        return (
            f"train.csv patients into train/valid ({args.valid_fraction:g} of patients to valid, "
            f"seed {args.seed}); test = {test}"
        )
    if args.source == "nih":
        if (args.root / "test_list.txt").is_file():
            return (
                f"official test_list.txt; valid = {args.valid_fraction:g} of the train_val patients "
                f"(seed {args.seed})"
            )
        return f"no test_list.txt: patients split 70/15/15 (seed {args.seed})"
    return f"nih1000: its own labels.csv split; covid: patients split 70/15/15 (seed {args.seed})"


def _build(args: argparse.Namespace) -> list[ManifestRow]:
    if not 0 < args.valid_fraction < 1:
        raise ValueError(f"--valid-fraction must be in (0, 1), got {args.valid_fraction}")
    if args.split_file is not None and args.source != "mimic":
        raise ValueError("--split-file is for mimic only")
    if args.test_csv is not None and args.source != "chexpert":
        raise ValueError("--test-csv is for chexpert only")
    if args.source == "shared":
        from training.data.shared import build_shared

        return build_shared(args.root, seed=args.seed)
    if args.source == "nih":
        from training.data.nih import build_nih

        return build_nih(args.root, valid_fraction=args.valid_fraction, seed=args.seed)
    if args.source == "chexpert":
        from training.data.chexpert import build_chexpert

        return build_chexpert(
            args.root, valid_fraction=args.valid_fraction, seed=args.seed, test_csv=args.test_csv
        )
    if args.mimic_iv_root is None:
        raise ValueError("mimic needs --mimic-iv-root (the MIMIC-IV folder with hosp/ and icu/)")
    from training.data.mimic import build_mimic

    return build_mimic(args.root, args.mimic_iv_root, split_file=args.split_file)
