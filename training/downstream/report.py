"""``cxr-msn report``: a markdown summary, one self-contained HTML page and PNG figures for one
downstream run folder.

Reads ``metrics.json``, ``predictions/test.npz`` and the classifier (``classifier.safetensors``
in the folder, or the one an ``evaluate`` run names). ``gather_report`` draws the figures and
collects the content once: per-label test AUROC/AUPRC with CIs, counts, thresholds and why a
label is not estimable, the macro values and the labels they average, the runs of the
protocol; ``report_markdown`` and ``report_html.render_html`` only lay it out, so
``report.md`` and ``report.html`` cannot disagree. Figures: ``roc_curves.png``,
``pr_curves.png``, ``pretraining_monitor.png`` (when the encoder's pretraining run folder
with its ``monitor.csv`` is at hand), ``embeddings.png`` (t-SNE of the test CLS embeddings, PCA above
``tsne_max`` images, coloured by label), ``attention.png`` (last-layer CLS attention of the
classifier over a few single-label positive test images, as in the paper's figures) and
``training_curves.png``; ``reliability.png`` (test reliability diagrams before and after the
per-label temperature scaling) and a calibration table when the run was calibrated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cxrmsn.fileio import atomic_write_text
from cxrmsn.labels import LABELS
from training.downstream.artifact import Predictions, load_predictions
from training.downstream.figures import (
    attention_figure,
    curves_figure,
    embedding_figure,
    embedding_map,
    history_figure,
    monitor_figure,
    reliability_figure,
)
from training.run_folder import read_csv_log

NOTICE = (
    "Research and demonstration only: not for clinical use unless validated for the intended "
    "use and setting. These are one run's metrics on one test split."
)
ROC_CAPTION = (
    "Test ROC curve of each label with its AUROC (95 % CI) and counts; dashed: chance. "
    "A label without an estimate says why."
)
PR_CAPTION = (
    "Test precision-recall curve of each label with its AUPRC (95 % CI) and counts; dashed: "
    "the share of positives (chance)."
)
EMBEDDING_CAPTION = (
    "Test CLS embeddings mapped to 2-D by {method}, one panel per estimable label: positive, "
    "negative, not annotated."
)
ATTENTION_CAPTION = (
    "The classifier's last-layer CLS attention over single-label positive test images (top: the "
    "model's input; bottom: the attention over it), with the predicted probability and threshold."
)
RELIABILITY_CAPTION = (
    "Test reliability diagrams ({bins} equal-width bins) of each trained, estimable label: the "
    "uncalibrated probabilities (before) and after per-label temperature scaling fitted on "
    "validation (after: what the classifier and exported models output), with each one's ECE; "
    "dashed: perfect calibration."
)
HISTORY_CAPTION = "Validation macro AUROC per epoch of each run of the protocol."
MONITOR_CAPTION = (
    "The encoder's pretraining, from its run folder: MSN loss per epoch and the learning monitor "
    "(probe of the EMA target encoder on the labelled validation images, dashed: its value at "
    "initialisation; collapse signals). Monitor verdict at the end: {status}."
)


class Strong(str):
    """A piece of text shown in bold."""


class Code(str):
    """A piece of text shown as code (paths, names)."""


Inline = tuple[str, ...]  # plain str, Strong and Code pieces, in order


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    align: str  # "l" or "r" per column
    rows: Sequence[tuple[str, ...]]
    strong_rows: frozenset[int] = frozenset()  # the selected run
    muted_rows: frozenset[int] = frozenset()  # labels without an estimate


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Report:
    title: str
    notice: str
    headline: list[tuple[str, str, str]]  # (name, value, CI or "")
    facts: list[Inline]
    tables: list[Table]
    figures: list[Figure] = field(default_factory=list)


class ReportFiles(NamedTuple):
    markdown: Path
    html: Path


def write_report(
    run_dir: Path, out: Path, *, tsne_max: int = 3000, attention_count: int = 6, seed: int = 0
) -> ReportFiles:
    from training.downstream.report_html import render_html  # it imports this module

    report = gather_report(run_dir, out, tsne_max=tsne_max, attention_count=attention_count, seed=seed)
    files = ReportFiles(out / "report.md", out / "report.html")
    atomic_write_text(files.markdown, report_markdown(report))
    atomic_write_text(files.html, render_html(report))
    return files


def gather_report(
    run_dir: Path, out: Path, *, tsne_max: int = 3000, attention_count: int = 6, seed: int = 0
) -> Report:
    """Draws the figures into ``out`` and collects everything both renderers show."""
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise ValueError(
            f"{metrics_file} does not exist: pass an --out folder of linear-eval, finetune "
            "(fraction_<f>) or evaluate"
        )
    metrics = json.loads(metrics_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    figures, notes = draw_figures(run_dir, out, metrics, tsne_max, attention_count, seed)
    macro = metrics["test"]["macro"]
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


def draw_figures(
    run_dir: Path, out: Path, metrics: dict[str, Any], tsne_max: int, attention_count: int, seed: int
) -> tuple[list[Figure], list[str]]:
    """The PNG figures with their captions, and notes on figures that could not be drawn."""
    predictions = load_predictions(run_dir, "test")
    per_label = metrics["test"]["per_label"]
    figures = []
    for kind, caption in (("roc", ROC_CAPTION), ("pr", PR_CAPTION)):
        path = out / f"{kind}_curves.png"
        curves_figure(path, predictions.probabilities, predictions.labels, per_label, kind)
        figures.append(Figure(path, caption))
    notes: list[str] = []
    calibration = metrics.get("calibration")
    if calibration and predictions.logits is not None:
        test_ece = calibration["ece"]["test"]
        shown = [label for label in LABELS if test_ece["after"]["per_label"].get(label) is not None]
        if shown:
            before = 1.0 / (1.0 + np.exp(-predictions.logits.astype(np.float64)))
            path = reliability_figure(
                out / "reliability.png",
                before,
                predictions.probabilities,
                predictions.labels,
                shown,
                test_ece,
                calibration["ece_bins"],
            )
            figures.append(Figure(path, RELIABILITY_CAPTION.format(bins=calibration["ece_bins"])))
    monitor = pretraining_monitor(metrics)
    if monitor is not None:
        rows, epochs = monitor
        path = monitor_figure(out / "pretraining_monitor.png", rows, epochs)
        figures.append(Figure(path, MONITOR_CAPTION.format(status=rows[-1].get("status") or "ok")))
    if predictions.embeddings is not None and len(predictions.embeddings) >= 4:
        coordinates, method = embedding_map(predictions.embeddings, seed=seed, tsne_max=tsne_max)
        shown = [label for label in LABELS if per_label[label]["status"] == "estimable"] or list(LABELS[-1:])
        path = embedding_figure(out / "embeddings.png", coordinates, method, predictions.labels, shown)
        figures.append(Figure(path, EMBEDDING_CAPTION.format(method=method)))
    classifier = _classifier_path(run_dir, metrics)
    if classifier is not None and attention_count > 0:
        examples = attention_examples(classifier, predictions, metrics, attention_count)
        if examples:
            figures.append(Figure(attention_figure(out / "attention.png", examples), ATTENTION_CAPTION))
        else:
            notes.append("No test image could be shown for attention (none decoded).")
    runs = metrics.get("runs") or (
        [{"name": "finetune", "history": metrics["history"]}] if "history" in metrics else []
    )
    if runs:
        figures.append(Figure(history_figure(out / "training_curves.png", runs), HISTORY_CAPTION))
    return figures, notes


def pretraining_monitor(metrics: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The monitor.csv and metrics.csv rows of the encoder's pretraining run, when they are here."""
    encoder = Path(str((metrics.get("encoder") or {}).get("path", "")))
    run = encoder.parent.parent  # RUN/checkpoints/encoder.safetensors
    if encoder.name != "encoder.safetensors" or not (run / "monitor.csv").is_file():
        return None
    rows, epochs = read_csv_log(run / "monitor.csv"), read_csv_log(run / "metrics.csv")
    last = ((metrics.get("encoder") or {}).get("pretraining_metrics") or {}).get("epochs")
    if isinstance(last, int):  # the run may have gone on after this encoder was saved
        rows = [row for row in rows if row["epoch"] <= last]
        epochs = [row for row in epochs if row["epoch"] <= last]
    return (rows, epochs) if rows else None


def _classifier_path(run_dir: Path, metrics: dict[str, Any]) -> Path | None:
    local = run_dir / "classifier.safetensors"
    if local.is_file():
        return local
    named = Path(metrics.get("classifier", {}).get("path", ""))
    return named if named.is_file() else None


def pick_examples(predictions: Predictions, trained: list[str], count: int) -> list[tuple[int, str]]:
    """Single-label positive test images (one counted positive, a trained label), the most
    confident first, one per label before any label repeats."""
    labels = predictions.labels
    positives = (labels.targets == 1) & labels.mask
    candidates: dict[str, list[int]] = {}
    for i in np.flatnonzero(positives.sum(axis=1) == 1):
        label = LABELS[int(np.flatnonzero(positives[i])[0])]
        if label in trained:
            candidates.setdefault(label, []).append(int(i))
    for label, indices in candidates.items():
        j = LABELS.index(label)
        indices.sort(key=lambda i: -predictions.probabilities[i, j])
    chosen: list[tuple[int, str]] = []
    while len(chosen) < count and any(candidates.values()):
        for label in list(candidates):
            if candidates[label] and len(chosen) < count:
                chosen.append((candidates[label].pop(0), label))
    return chosen


def attention_examples(
    classifier: Path, predictions: Predictions, metrics: dict[str, Any], count: int
) -> list[dict[str, Any]]:
    import torch
    from PIL import Image

    from cxrmsn.checkpoint import load_classifier
    from cxrmsn.errors import DecodeError
    from cxrmsn.imaging import decode
    from cxrmsn.preprocess import preprocess, resize_and_crop

    model, metadata = load_classifier(classifier)
    config = metadata.preprocess_config
    examples = []
    for index, label in pick_examples(predictions, list(metadata.trained_labels), count):
        try:
            pixels = decode(Path(predictions.paths[index]).read_bytes()).pixels
        except (DecodeError, OSError):
            continue
        with torch.no_grad():
            probabilities, attention = model(torch.from_numpy(preprocess(pixels, config))[None])
        grid = attention[0].numpy()
        upsampled = Image.fromarray(grid / grid.max(), mode="F").resize(
            (config.crop, config.crop), Image.Resampling.BILINEAR
        )
        threshold = metadata.thresholds.get(label)
        probability = float(probabilities[0, LABELS.index(label)])
        title = f"{label}\np = {probability:.2f}" + (
            f" (threshold {threshold:.2f})" if threshold is not None else ""
        )
        examples.append(
            {
                "image": resize_and_crop(pixels, config),
                "attention": np.asarray(upsampled),
                "title": title,
                "path": predictions.paths[index],
            }
        )
    return examples


def _value_and_ci(entry: dict[str, Any] | None) -> tuple[str, str]:
    if not entry:
        return "-", ""
    ci = entry.get("ci")
    return f"{entry['value']:.3f}", (f"{ci[0]:.3f} to {ci[1]:.3f}" if ci else "")


def _metric_cell(entry: dict[str, Any] | None) -> str:
    value, ci = _value_and_ci(entry)
    return f"{value} ({ci})" if ci else value


def _summary_facts(metrics: dict[str, Any]) -> list[Inline]:
    test, selected = metrics["test"], metrics.get("selected_run")
    macro, boot = test["macro"], test["bootstrap"]
    return [
        ("Protocol: ", Strong(metrics["protocol"]))
        + ((", selected run ", Code(selected)) if selected else ()),
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
        (f"Labels with training signal: {', '.join(metrics['trained_labels']) or 'none'}.",),
    ]


def _identity_facts(run_dir: Path, metrics: dict[str, Any]) -> list[Inline]:
    """What was evaluated and on what: encoder, classifier, data, code version."""
    facts: list[Inline] = []
    encoder = metrics.get("encoder") or {}
    if encoder:
        facts.append(
            (
                f"Encoder: {encoder.get('architecture')} "
                f"({'frozen' if encoder.get('frozen') else 'fine-tuned'}), ",
                Code(str(encoder.get("path"))),
                f"; pretraining: {encoder.get('pretraining')}",
            )
        )
    if "classifier" in metrics:
        classifier = metrics["classifier"]
        facts.append(
            (
                f"Classifier: {classifier.get('architecture')}, ",
                Code(classifier["path"]),
                f" (trained on: {classifier['training_data']})",
            )
        )
    overlap = metrics.get("pretraining_overlap") or {}
    if overlap.get("checked"):
        facts.append(
            (
                "Valid/test images of patients seen in pretraining: "
                f"{overlap['valid_images_of_pretraining_patients']} / "
                f"{overlap['test_images_of_pretraining_patients']}",
            )
        )
    return facts + _data_facts(metrics) + _version_facts(run_dir)


def _data_facts(metrics: dict[str, Any]) -> list[Inline]:
    data = metrics.get("training_data") or metrics.get("data") or {}
    facts: list[Inline] = []
    if "summary" in data:
        facts.append((f"Data: {data['summary']}; {_policy(data)}",))
    elif "evaluated_split" in metrics:
        datasets = ", ".join(data.get("datasets") or []) or "unknown"
        facts.append(
            (
                f"Evaluated on: the {metrics['evaluated_split']} split of ",
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


def _threshold_value(metrics: dict[str, Any], label: str) -> float | None:
    """The saved threshold of a label: linear-eval/finetune record it with its method, an
    evaluate run with the classifier it ran."""
    saved = (metrics.get("thresholds") or {}).get(label)
    if saved is not None:
        return float(saved["value"])
    named = (metrics.get("classifier") or {}).get("thresholds", {}).get(label)
    return float(named) if named is not None else None


def _label_table(metrics: dict[str, Any]) -> Table:
    rows, muted = [], set()
    for i, label in enumerate(LABELS):
        e = metrics["test"]["per_label"][label]
        threshold = _threshold_value(metrics, label)
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


def _threshold_table(metrics: dict[str, Any]) -> list[Table]:
    thresholds = metrics.get("thresholds") or {}
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


def _calibration_table(metrics: dict[str, Any]) -> list[Table]:
    """Per-label temperature and ECE before and after on valid and test, and the macro row."""
    block = metrics.get("calibration")
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
    title = (
        f"Calibration: per-label temperature scaling fitted on {block['fitted_on']} "
        f"(ECE, {block['ece_bins']} bins; AUROC unchanged)"
    )
    return [Table(title, header, "lrrrrrl", rows, frozenset({len(LABELS)}), frozenset(muted))]


def _run_table(metrics: dict[str, Any]) -> list[Table]:
    runs = metrics.get("runs") or []
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
    selected = {i for i, run in enumerate(runs) if run["name"] == metrics.get("selected_run")}
    header = ("Run", "lr", "Schedule", "Epochs run", "Best epoch", "Best valid macro AUROC", "Stopped")
    return [
        Table("Runs of the protocol (selected on validation)", header, "lrlrrrl", rows, frozenset(selected))
    ]


def report_markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", f"> {report.notice}", ""]
    lines += ["- " + _markdown_inline(fact) for fact in report.facts]
    for table in report.tables:
        lines += ["", f"## {table.title}", "", *_markdown_table(table)]
    lines += ["", "## Figures", ""]
    for figure in report.figures:
        lines += [f"![{figure.path.name}]({figure.path.name})", "", f"*{figure.caption}*", ""]
    return "\n".join(lines)


def _markdown_inline(pieces: Inline) -> str:
    return "".join(
        f"**{p}**" if isinstance(p, Strong) else f"`{p}`" if isinstance(p, Code) else p for p in pieces
    )


def _markdown_table(table: Table) -> list[str]:
    lines = [
        "| " + " | ".join(table.header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in table.align) + "|",
    ]
    for i, row in enumerate(table.rows):
        cells = (f"**{row[0]}**", *row[1:]) if i in table.strong_rows else row
        lines.append("| " + " | ".join(cells) + " |")
    return lines
