"""Predict on files or folders without a server, through the service's own code path.

Each file is decoded (DICOM, PNG or JPEG by content), preprocessed and run by ONNX
Runtime exactly as ``POST /predict`` does. Folders are searched recursively. Files that
cannot be decoded, and images the out-of-distribution guard does not take for a chest
radiograph (``not_a_chest_radiograph``; ``--ood warn`` serves them with a warning), are
reported on stderr and as error records, and skipped; the exit status is 1 if any was.
With ``--dicom-dir`` each DICOM input also gets a Structured Report and a heatmap Secondary
Capture (as ``POST /predict_dicom`` returns them), ready to send to a PACS.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrmsn.fileio import atomic_write_bytes
from serving.config import add_model_arguments

HELP = "predict on image files or folders without a server (table, JSON or CSV)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="DICOM, PNG or JPEG files, or folders of them")
    add_model_arguments(parser)
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    parser.add_argument("--overlay-dir", type=Path, default=None, help="write attention overlay PNGs here")
    parser.add_argument(
        "--dicom-dir",
        type=Path,
        default=None,
        help="for DICOM inputs, write a Structured Report (<SOPInstanceUID>.sr.dcm) and a heatmap "
        "Secondary Capture (<SOPInstanceUID>.sc.dcm) here",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per inference batch")
    parser.add_argument(
        "--ood",
        choices=["refuse", "warn"],
        default=None,
        help="an image the out-of-distribution guard does not take for a chest radiograph: refuse "
        "it (reported as not_a_chest_radiograph, exit status 1) or predict with a warning "
        "(default: env CXR_MSN_OOD, else refuse)",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cxrmsn.errors import DecodeError
    from cxrmsn.repository import RepositoryError
    from serving.predictor import load_predictor

    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        overrides = {"ood_mode": args.ood} if args.ood else {}
        predictor = load_predictor(args.repository, variant=args.variant, **overrides)
    except RepositoryError as error:  # a bad repository, or a variant refused by its self-check
        print(f"cxr-msn predict: {error}", file=sys.stderr)
        return 2
    if args.format != "json":  # JSON records carry them in each result's warnings
        for warning in predictor.model_warnings():  # labels never counted positive, and why
            print(f"note: {warning}", file=sys.stderr)
    files = list(_expand(args.inputs))
    show_progress = any(path.is_dir() for path in args.inputs)
    writer = _Writer(args.format, predictor.manifest.labels)
    failures = 0
    pending: list[tuple[Path, Any]] = []
    for path in tqdm(files, unit="file", disable=not show_progress or None, file=sys.stderr):
        try:
            keep_header = args.dicom_dir is not None
            pending.append((path, predictor.prepare(path.read_bytes(), keep_header=keep_header)))
        except (DecodeError, OSError) as error:
            failures += 1
            code = getattr(error, "code", "unreadable_file")
            detail = getattr(error, "detail", None) or str(error)
            print(f"skipped {path}: {code}: {detail}", file=sys.stderr)
            writer.error(path, code, detail)
        if len(pending) >= args.batch_size:
            failures += _flush(predictor, pending, writer, args)
    failures += _flush(predictor, pending, writer, args)
    writer.close()
    return 1 if failures else 0


def _expand(inputs: list[Path]) -> Iterator[Path]:
    for path in inputs:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            yield path


def _flush(predictor: Any, pending: list[tuple[Path, Any]], writer: _Writer, args: argparse.Namespace) -> int:
    """Run the pending images as one batch and write their outputs; returns the failure count."""
    import numpy as np

    from cxrmsn.errors import NotAChestRadiographError

    if not pending:
        return 0
    batch = np.stack([prepared.model_input for _, prepared in pending])
    probabilities, attention, scores = predictor.infer_scored(batch)
    failures = 0
    for index, (path, prepared) in enumerate(pending):
        try:
            verdict = predictor.screen(prepared, None if scores is None else scores[index])
        except NotAChestRadiographError as error:
            failures += 1
            print(f"refused {path}: {error.code}: {error.detail}", file=sys.stderr)
            writer.error(path, error.code, error.detail)
            continue
        result = predictor.result(
            prepared,
            probabilities[index],
            attention[index],
            overlay=args.overlay_dir is not None,
            ood=verdict,
        )
        if args.overlay_dir is not None:
            args.overlay_dir.mkdir(parents=True, exist_ok=True)
            png = base64.b64decode(result.pop("overlay_png_base64"))
            atomic_write_bytes(args.overlay_dir / f"{path.stem}_attention.png", png)
        if args.dicom_dir is not None:
            item = (path, prepared)
            failures += _write_dicom_outputs(predictor, item, attention[index], result, args.dicom_dir)
        writer.result(path, result)
        if args.format != "json":  # JSON records carry it in their warnings
            for label, reason in result.get("overruled", {}).items():  # the No Finding rule
                print(f"note: {path}: {label} not positive: {reason}", file=sys.stderr)
            if verdict.refused:  # CXR_MSN_OOD=warn
                print(f"warning: {path}: {result['warnings'][0]}", file=sys.stderr)
    pending.clear()
    return failures


def _write_dicom_outputs(
    predictor: Any, item: tuple[Path, Any], attention: Any, result: dict[str, Any], folder: Path
) -> int:
    from cxrmsn.errors import DecodeError
    from serving import dicom_output

    path, prepared = item
    if prepared.decoded.info.format != "dicom":
        print(
            f"no DICOM output for {path}: it is a {prepared.decoded.info.format}, not a DICOM",
            file=sys.stderr,
        )
        return 0
    try:
        source = dicom_output.source_header(prepared.decoded)
        encoded = predictor.dicom_outputs(prepared, attention, result, source)
    except DecodeError as error:
        print(f"no DICOM output for {path}: {error.code}: {error.detail}", file=sys.stderr)
        return 1
    # Named by the source instance: PACS exports reuse file names (IM000001) in every folder.
    for part, content in encoded.items():
        atomic_write_bytes(folder / f"{source.SOPInstanceUID}.{part}.dcm", content)
    return 0


class _Writer:
    def __init__(self, fmt: str, labels: list[str]) -> None:
        self.fmt = fmt
        self.labels = labels
        self._csv: Any = None
        if fmt == "csv":
            self._csv = csv.writer(sys.stdout)
            self._csv.writerow(["file", *labels, "positive", "error"])
        elif fmt == "table":
            print(f"{'file':40s}  {'top findings (probability)':60s}  positive")

    def result(self, path: Path, result: dict[str, Any]) -> None:
        probabilities = result["probabilities"]
        if self.fmt == "json":
            print(json.dumps({"file": str(path), **result}))
        elif self.fmt == "csv":
            row = [f"{probabilities[label]:.6f}" for label in self.labels]
            self._csv.writerow([str(path), *row, "|".join(result["positive"]), ""])
        else:
            top = sorted(probabilities.items(), key=lambda item: -item[1])[:3]
            findings = ", ".join(f"{label} {p:.2f}" for label, p in top)
            print(f"{str(path)[-40:]:40s}  {findings:60s}  {', '.join(result['positive']) or '-'}")

    def error(self, path: Path, code: str, detail: str) -> None:
        if self.fmt == "json":
            print(json.dumps({"file": str(path), "error": code, "detail": detail}))
        elif self.fmt == "csv":
            self._csv.writerow([str(path), *[""] * len(self.labels), "", code])

    def close(self) -> None:
        sys.stdout.flush()
