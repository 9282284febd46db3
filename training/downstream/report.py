"""``cxr-msn report``: a markdown summary, one self-contained HTML page and PNG figures for one
downstream run folder.

Reads ``metrics.json`` (``RunMetrics``), ``predictions/test.npz`` and the classifier
(``classifier.safetensors`` in the folder, or the one an ``evaluate`` run names).
``gather_report`` draws the figures (``report_figures``) and collects the content once into a
``report_model.Report``: per-label test AUROC/AUPRC with CIs, counts, thresholds and why a
label is not estimable, the macro values and the labels they average, the runs of the
protocol, and a calibration table when the run was calibrated; ``report_markdown`` and
``report_html`` only lay it out, so ``report.md`` and ``report.html`` cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from cxrmsn.fileio import atomic_write_text
from cxrmsn.labels import LABELS
from training.downstream.estimates import estimate_parts, format_estimate
from training.downstream.report_figures import draw_figures
from training.downstream.report_html import render_html
from training.downstream.report_markdown import report_markdown
from training.downstream.report_model import Code, Inline, Report, Strong, Table
from training.downstream.run_metrics import RunMetrics

NOTICE = (
    "Research and demonstration only: not for clinical use unless validated for the intended "
    "use and setting. These are one run's metrics on one test split."
)


class ReportFiles(NamedTuple):
    markdown: Path
    html: Path


def write_report(
    run_dir: Path, out: Path, *, tsne_max: int = 3000, attention_count: int = 6, seed: int = 0
) -> ReportFiles:
    report = gather_report(run_dir, out, tsne_max=tsne_max, attention_count=attention_count, seed=seed)
    files = ReportFiles(out / "report.md", out / "report.html")
    atomic_write_text(files.markdown, report_markdown(report))
    atomic_write_text(files.html, render_html(report))
    return files


def gather_report(
    run_dir: Path, out: Path, *, tsne_max: int = 3000, attention_count: int = 6, seed: int = 0
) -> Report:
    """Draws the figures into ``out`` and collects everything both renderers show."""
    metrics = RunMetrics.read(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures, notes = draw_figures(run_dir, out, metrics, tsne_max, attention_count, seed)
    macro = metrics.macro("test")
    headline = [
        ("Macro AUROC", *_value_and_ci(macro["auroc"])),
        ("Macro AUPRC", *_value_and_ci(macro["auprc"])),
    ]
    facts = _summary_facts(metrics) + _identity_facts(run_dir, metrics)
    tables = [
        _label_table(metrics),
        *_threshold_table(metrics),
        *_calibration_table(metrics),
        *_run_table(metrics),
    ]
    return Report(
        f"Report: {run_dir}", NOTICE, headline, facts + [(note,) for note in notes], tables, figures
    )


def _value_and_ci(entry: dict[str, Any] | None) -> tuple[str, str]:
    return estimate_parts(entry) if entry else ("-", "")


def _metric_cell(entry: dict[str, Any] | None) -> str:
    return format_estimate(entry, missing="-")


def _summary_facts(metrics: RunMetrics) -> list[Inline]:
    test, selected = metrics.split("test"), metrics.selected_run
    macro, boot = test["macro"], test["bootstrap"]
    return [
        ("Protocol: ", Strong(metrics.protocol)) + ((", selected run ", Code(selected)) if selected else ()),
        (
            f"Test images: {test['images']}; macro AUROC ",
            Strong(_metric_cell(macro["auroc"])),
            ", macro AUPRC ",
            Strong(_metric_cell(macro["auprc"])),
            f" over {len(macro['labels'])} labels: {', '.join(macro['labels']) or 'none'}.",
        ),
        (
            f"Confidence intervals: {100 * boot['level']:g} % percentile bootstrap, {boot['resamples']} "
            f"resamples of the test images (seed {boot['seed']}); resamples in which a label has no "
            "positive or no negative are dropped (counts below).",
        ),
        (f"Labels with training signal: {', '.join(metrics.trained_labels) or 'none'}.",),
    ]


def _identity_facts(run_dir: Path, metrics: RunMetrics) -> list[Inline]:
    """What was evaluated and on what: encoder, classifier, data, code version."""
    facts: list[Inline] = []
    encoder = metrics.encoder or {}
    if encoder:
        facts.append(
            (
                f"Encoder: {encoder.get('architecture')} "
                f"({'frozen' if encoder.get('frozen') else 'fine-tuned'}), ",
                Code(str(encoder.get("path"))),
                f"; pretraining: {encoder.get('pretraining')}",
            )
        )
    if metrics.classifier is not None:
        classifier = metrics.classifier
        facts.append(
            (
                f"Classifier: {classifier.get('architecture')}, ",
                Code(classifier["path"]),
                f" (trained on: {classifier['training_data']})",
            )
        )
    overlap = metrics.pretraining_overlap or {}
    if overlap.get("checked"):
        facts.append(
            (
                "Valid/test images of patients seen in pretraining: "
                f"{overlap['valid_images_of_pretraining_patients']} / "
                f"{overlap['test_images_of_pretraining_patients']}",
            )
        )
    return facts + _data_facts(metrics) + _version_facts(run_dir)


def _data_facts(metrics: RunMetrics) -> list[Inline]:
    data = metrics.data_block()
    facts: list[Inline] = []
    if "summary" in data:
        facts.append((f"Data: {data['summary']}; {_policy(data)}",))
    elif metrics.evaluated_split is not None:
        datasets = ", ".join(data.get("datasets") or []) or "unknown"
        facts.append(
            (
                f"Evaluated on: the {metrics.evaluated_split} split of ",
                Code(str(data.get("manifest"))),
                f" ({data.get('images')} images of {datasets}); {_policy(data)}",
            )
        )
    if data.get("manifest_sha256"):
        facts.append(("Manifest: ", Code(str(data["manifest"])), f" (sha256 {data['manifest_sha256']})"))
    return facts


def _policy(data: dict[str, Any]) -> str:
    policy = data.get("label_policy") or {}
    return f"uncertain labels: {policy.get('uncertain')}; blank labels: {policy.get('blank')}"


def _version_facts(run_dir: Path) -> list[Inline]:
    version_file = run_dir / "version.json"
    if not version_file.is_file():
        return []
    describe = json.loads(version_file.read_text()).get("git_describe")
    return [("Code version: ", Code(str(describe)))] if describe else []


def _label_table(metrics: RunMetrics) -> Table:
    rows, muted = [], set()
    for i, label in enumerate(LABELS):
        e = metrics.split("test")["per_label"][label]
        threshold = metrics.threshold(label)
        rows.append(
            (
                label,
                str(e["positives"]),
                str(e["negatives"]),
                _metric_cell(e.get("auroc")),
                _metric_cell(e.get("auprc")),
                str(e["auroc"]["resamples_used"]) if e.get("auroc") else "-",
                "-" if threshold is None else f"{threshold:.4f}",
                e.get("reason") or "",
            )
        )
        if e["status"] != "estimable":
            muted.add(i)
    header = (
        "Label",
        "Positives",
        "Negatives",
        "AUROC (95 % CI)",
        "AUPRC (95 % CI)",
        "Resamples used",
        "Threshold",
        "Note",
    )
    return Table("Test metrics per label", header, "lrrllrrl", rows, muted_rows=frozenset(muted))


def _threshold_table(metrics: RunMetrics) -> list[Table]:
    thresholds = metrics.thresholds or {}
    if not thresholds:
        return []
    rows = [
        (
            label,
            f"{t['value']:.4f}",
            t["method"],
            t["chosen_on"],
            f"{t['sensitivity']:.3f}",
            f"{t['specificity']:.3f}",
            f"{t['precision']:.3f}",
        )
        for label, t in thresholds.items()
    ]
    header = ("Label", "Threshold", "Method", "Chosen on", "Sensitivity", "Specificity", "Precision")
    return [Table("Thresholds (saved with the classifier)", header, "lrllrrr", rows)]


def _calibration_table(metrics: RunMetrics) -> list[Table]:
    """Per-label temperature and ECE before and after on valid and test, and the macro row."""
    block = metrics.calibration
    if not block:
        return []

    def cell(split: str, when: str, label: str | None) -> str:
        entry = block["ece"].get(split, {}).get(when, {})
        value = entry.get("macro") if label is None else entry.get("per_label", {}).get(label)
        return "-" if value is None else f"{value:.4f}"

    rows, muted = [], set()
    for i, label in enumerate(LABELS):
        temperature = block["temperatures"].get(label, 1.0)
        ece = [cell(split, when, label) for split in ("valid", "test") for when in ("before", "after")]
        rows.append((label, f"{temperature:.3f}", *ece, block["unfitted"].get(label, "")))
        if label in block["unfitted"]:
            muted.add(i)
    macro = [cell(split, when, None) for split in ("valid", "test") for when in ("before", "after")]
    rows.append(("Macro", "", *macro, "mean over the trained, estimable labels"))
    header = (
        "Label",
        "Temperature",
        "ECE valid before",
        "ECE valid after",
        "ECE test before",
        "ECE test after",
        "Note",
    )
    method = (
        "none (head.calibration), the head's own probabilities"
        if block.get("method") == "none"
        else f"per-label temperature scaling fitted on {block['fitted_on']}"
    )
    title = f"Calibration: {method} (ECE, {block['ece_bins']} bins; AUROC unchanged)"
    return [Table(title, header, "lrrrrrl", rows, frozenset({len(LABELS)}), frozenset(muted))]


def _run_table(metrics: RunMetrics) -> list[Table]:
    runs = metrics.runs or []
    if not runs:
        return []
    rows = [
        (
            run["name"],
            f"{run['lr']:g}",
            run["schedule"],
            str(run["epochs_run"]),
            str(run["best_epoch"]),
            f"{run['best_valid_macro_auroc']:.4f}",
            str(run["stopped"]),
        )
        for run in runs
    ]
    selected = {i for i, run in enumerate(runs) if run["name"] == metrics.selected_run}
    header = ("Run", "lr", "Schedule", "Epochs run", "Best epoch", "Best valid macro AUROC", "Stopped")
    return [
        Table("Runs of the protocol (selected on validation)", header, "lrlrrrl", rows, frozenset(selected))
    ]
