"""Build a manifest CSV (training.data.manifest) from a data set's own files.

Examples:
  cxr-msn build-manifest shared --root ../shared/data --out runs/shared.csv
  cxr-msn build-manifest nih --root /data/nih --out nih.csv
  cxr-msn build-manifest chexpert --root /data/CheXpert-v1.0-small --out chexpert.csv
  cxr-msn build-manifest mimic --root /data/mimic-cxr-jpg/2.1.0 --mimic-iv-root /data/mimiciv/3.1 \
      --out mimic.csv

Splits are always by patient. Prints a summary (images and patients per split) as JSON.
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
    print(json.dumps({"manifest": str(args.out), "images": dict(images), "patients": dict(patients)}))
    return 0


def _build(args: argparse.Namespace) -> list[ManifestRow]:
    if not 0 < args.valid_fraction < 1:
        raise ValueError(f"--valid-fraction must be in (0, 1), got {args.valid_fraction}")
    if args.source == "shared":
        from training.data.shared import build_shared

        return build_shared(args.root, seed=args.seed)
    if args.source == "nih":
        from training.data.nih import build_nih

        return build_nih(args.root, valid_fraction=args.valid_fraction, seed=args.seed)
    if args.source == "chexpert":
        from training.data.chexpert import build_chexpert

        return build_chexpert(args.root, valid_fraction=args.valid_fraction, seed=args.seed)
    if args.mimic_iv_root is None:
        raise ValueError("mimic needs --mimic-iv-root (the MIMIC-IV folder with hosp/ and icu/)")
    from training.data.mimic import build_mimic

    return build_mimic(args.root, args.mimic_iv_root)
