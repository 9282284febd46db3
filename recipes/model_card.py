"""MODEL_CARD.md for the bundled model, filled from the run's own records (no typed-in numbers).

The prose is recipes/model_card_template.md; this module computes its fields.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from cxrmsn.fileio import atomic_write_text
from cxrmsn.labels import LABELS

TEMPLATE = Path(__file__).with_name("model_card_template.md")
ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def interval(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "not estimable"
    low, high = (entry.get("ci") or [None, None])[:2]
    return f"{entry['value']:.3f}" if low is None else f"{entry['value']:.3f} [{low:.3f}, {high:.3f}]"


def label_rows(
    model: dict[str, Any], baseline: dict[str, Any], thresholds: dict[str, Any], gate: dict[str, Any]
) -> str:
    rows = []
    for label in LABELS:
        ours, base = model["per_label"][label], baseline["per_label"][label]
        verdict = gate_cell(gate, label, label in thresholds)
        if ours["status"] != "estimable":
            rows.append(f"| {label} | {ours.get('positives', 0)} | {ours['reason']} | | | | {verdict} |")
            continue
        threshold = thresholds[label]
        cells = [label, str(ours["positives"]), interval(ours["auroc"]), interval(ours["auprc"])]
        cells += [interval(base["auroc"]), f"{threshold['value']:.3f} ({threshold['chosen_on']})", verdict]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def gate_cell(gate: dict[str, Any], label: str, trained: bool) -> str:
    if not trained:
        return "untrained"
    if not gate:
        return "not evaluated"
    bound = gate.get("auroc_lower_bounds", {}).get(label)
    bound_text = "no estimate" if bound is None else f"lower bound {bound:.3f}"
    state = "not validated" if label in gate.get("not_validated_labels", []) else "validated"
    return f"{state} ({bound_text})"


def gate_summary(gate: dict[str, Any], trained: list[str]) -> str:
    if not gate:
        return "This repository was exported without the gate."
    failing = gate.get("not_validated_labels", [])
    passing = [label for label in trained if label not in failing]
    return f"Validated: {', '.join(passing) or 'none'}. Not validated: {', '.join(failing) or 'none'}."


def monitor_rows(run: Path) -> str:
    from training.run_folder import read_csv_log

    records = read_csv_log(run / "monitor.csv")
    if not records:
        return "| (no monitor.csv: pretrained before the monitor existed) | | | | | | |"

    def number(value: Any, fmt: str) -> str:
        return fmt.format(value) if isinstance(value, int | float) else "-"

    columns = ("probe_auroc", "embedding_std", "prototypes_used", "target_max", "agreement")
    statuses = current_statuses(run, records)
    return "\n".join(
        "| "
        + " | ".join(
            [
                str(row["epoch"]),
                *(number(row[c], "{:.0f}" if c == "prototypes_used" else "{:.3f}") for c in columns),
            ]
        )
        + f" | {status_cell(status, row['status'])} |"
        for row, status in zip(records, statuses, strict=True)
    )


def status_cell(current: str, logged: str) -> str:
    return current if current == logged else f"{current} (the run logged: {logged})"


def current_statuses(run: Path, records: list[dict[str, Any]]) -> list[str]:
    """The monitor's verdict on each record under today's rules (training.monitor.assess)."""
    from training.config import from_dict
    from training.monitor import assess

    config = from_dict(json.loads((run / "config.json").read_text()))
    multimodal = bool(config.ehr.features)
    return [
        assess(records[: index + 1], config.monitor, config.loss.num_prototypes, multimodal=multimodal)
        for index in range(len(records))
    ]


#: The control experiment's tables, one per linear head, the served head's first.
CONTROL_TABLES = (
    (
        "results_logistic.md",
        "the served head: per-label L2 logistic regression on standardized embeddings, C chosen "
        "on validation (`--linear-set head.features=standardized head.solver=logistic`)",
    ),
    ("results.md", "the paper's head: five Adam runs on the raw CLS embedding, selected on validation"),
    (
        "results_standardized.md",
        "the paper's five Adam runs on standardized embeddings (`--linear-set head.features=standardized`)",
    ),
)


def controls_section(folder: Path | None) -> str:
    """The control experiment's tables (docs/training.md has the commands), or why they are absent."""
    if folder is None or not (folder / "results.md").is_file():
        return "No control experiment was recorded with this recipe."
    shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    parts = [f'From `{shown}` (the commands and the discussion are in docs/training.md, "Controls").']
    for name, what in CONTROL_TABLES:
        if (folder / name).is_file():
            parts.append(
                f"**{what[0].upper()}{what[1:]}** (`{name}`):\n\n" + (folder / name).read_text().strip()
            )
    return "\n\n".join(parts)


def pretraining_rows(run: Path) -> str:
    with (run / "metrics.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    columns = [("epoch", "{:.0f}"), ("loss", "{:.4f}"), ("cross_entropy", "{:.3f}")]
    columns += [("mean_entropy", "{:.3f}"), ("images_per_s", "{:.2f}"), ("seconds", "{:.0f}")]
    return "\n".join(
        "| " + " | ".join(fmt.format(float(row[name])) for name, fmt in columns) + " |" for row in records
    )


def variant_rows(manifest: dict[str, Any]) -> str:
    rows = []
    for name, entry in sorted(manifest["models"].items()):
        auroc = entry.get("notes", {}).get("auroc")
        change = auroc.get("macro_auroc_change") if isinstance(auroc, dict) else None
        text = "reference" if name == "fp32" else f"{change:+.4f}" if isinstance(change, float) else "n/a"
        rows.append(f"| {name} | `{entry['path']}` | {entry['bytes'] / 1e6:.1f} MB | {text} |")
    return "\n".join(rows)


def verdict(ours: dict[str, Any], base: dict[str, Any]) -> str:
    low = (ours.get("ci") or [None])[0]
    if ours["value"] > base["value"]:
        overlap = low is not None and low <= base["value"]
        return "The self-supervised model's test macro AUROC is above the pixel baseline's" + (
            "; the baseline's value lies inside the model's 95 % CI, so on this small test split "
            "the two are not distinguishable."
            if overlap
            else "."
        )
    return (
        "**The self-supervised model does not beat the pixel baseline** on the test split's macro "
        "AUROC: MSN from random weights on about 800 small images on a CPU has not learnt features "
        "better than 32 x 32 pixels. It ships because the serving path needs a real trained model, "
        "not because it is good."
    )


def calibration_section(metrics: dict[str, Any]) -> str:
    """Temperatures and ECE before/after on valid and test, from linear-eval's metrics.json."""
    block = metrics.get("calibration")
    if not block:
        return (
            "This model was built before calibration: its probabilities are the linear head's "
            "sigmoid outputs, uncalibrated; read them as scores, not as frequencies."
        )

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    ece = block["ece"]
    if block.get("method") == "none":
        return no_calibration_text(ece)
    rows = []
    for label in LABELS:
        if label in block["unfitted"]:
            continue
        cells = [
            number(ece[split][when]["per_label"].get(label))
            for split in ("valid", "test")
            for when in ("before", "after")
        ]
        rows.append(f"| {label} | {block['temperatures'][label]:.3f} | " + " | ".join(cells) + " |")
    macro = [number(ece[split][when]["macro"]) for split in ("valid", "test") for when in ("before", "after")]
    rows.append("| **macro** | | " + " | ".join(f"**{cell}**" for cell in macro) + " |")
    kept = ", ".join(f"{label} ({why})" for label, why in block["unfitted"].items()) or "none"
    change = max(
        (v for v in (ece[split].get("auroc_max_change") for split in ece) if v is not None), default=0.0
    )
    return "\n".join(
        [
            f"Per-label temperature scaling fitted on the {block['fitted_on']} split (each label's "
            "temperature T minimises its validation negative log-likelihood; probability = "
            "sigmoid(logit / T)), folded into the linear head, so the exported ONNX models and the "
            "service output calibrated probabilities and the thresholds above are on that scale. "
            f"Dividing by T keeps every AUROC (largest change measured: {change:.1e}). Expected "
            f"calibration error ({block['ece_bins']} equal-width bins), before and after:",
            "",
            "| label | T | ECE valid before | ECE valid after | ECE test before | ECE test after |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Labels that keep T = 1: {kept}. The temperatures were fitted on the split whose "
            "ECE is shown as valid, so the test columns are the honest ones; with few test "
            "positives per label, ECE itself is noisy. " + test_verdict(ece["test"]),
        ]
    )


def no_calibration_text(ece: dict[str, Any]) -> str:
    """The model card's calibration paragraph when ``head.calibration`` chose none."""

    def macro(split: str) -> str:
        value = ece[split]["before"]["macro"]
        return "-" if value is None else f"{value:.3f}"

    return (
        "No post-hoc calibration: the per-label logistic head is fitted by likelihood already, and "
        "on the 7 logistic-head runs measured (this model and the controls), temperature, Platt and "
        "isotonic scaling fitted on validation each made the test ECE worse "
        "(docs/results/calibration, `python -m recipes.calibration_measure`). The probabilities are "
        "the head's sigmoid outputs and the thresholds are on that scale. Macro expected calibration "
        f"error (15 equal-width bins): valid {macro('valid')}, test {macro('test')}. With few "
        "positives per label these are noisy; read the probabilities as scores."
    )


def test_verdict(test: dict[str, Any]) -> str:
    """One sentence on whether temperature scaling helped on the test split, naming the label
    it hurt most when it did not."""
    before, after = test["before"]["macro"], test["after"]["macro"]
    if before is None or after is None:
        return "No test ECE could be estimated."
    if after < before:
        return f"On the test split the macro ECE fell from {before:.3f} to {after:.3f}."
    changes = {
        label: value - (test["before"]["per_label"].get(label) or 0.0)
        for label, value in test["after"]["per_label"].items()
        if value is not None
    }
    worst = max(changes, key=lambda label: changes[label])
    return (
        f"**On the test split the macro ECE did not improve** ({before:.3f} before, {after:.3f} "
        "after): the logistic head, fitted by likelihood with C chosen on validation, was already "
        "about as calibrated as a validation split of this size can tell, and temperatures "
        f"fitted on a handful of validation positives do not transfer (worst: {worst}, test ECE "
        f"{changes[worst]:+.3f}). The probabilities are on the scale the thresholds were chosen "
        "on; do not read them as frequencies for a population."
    )


def fields(work: Path, repository: Path, recipe: dict[str, Any]) -> dict[str, str]:
    metrics, baseline = _load(work / "linear" / "metrics.json"), _load(work / "baseline.json")
    manifest, pipeline = _load(repository / "manifest.json"), _load(work / "pipeline.json")
    with (work / "pretrain" / "metrics.csv").open(newline="") as handle:
        epochs = list(csv.DictReader(handle))
    test, valid = metrics["test"], metrics["valid"]
    gate = manifest.get("validity_gate") or {}
    controls = recipe.get("controls")
    splits = metrics["training_data"]["splits"]
    pretrain_seconds = sum(float(row["seconds"]) for row in epochs)  # also when the run was reused
    steps = {name: step["seconds"] for name, step in pipeline.items()}
    steps["pretrain"] = max(steps.get("pretrain", 0.0), pretrain_seconds)
    minutes = sum(steps.values()) / 60
    return {
        "total_minutes": f"{minutes:.0f}",
        "architecture": manifest["architecture"],
        "selected_run": metrics["selected_run"],
        "head_protocol": head_protocol(json.loads((work / "linear" / "config.json").read_text())["head"]),
        "preprocessing": ", ".join(f"{k} {v}" for k, v in manifest["preprocessing"].items()),
        "seed": str(recipe["seed"]),
        "step_times": f"{minutes:.0f} min in total ("
        + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in steps.items())
        + ")",
        "split_counts": "; ".join(
            f"{name} {info['images']} images ("
            + ", ".join(f"{dataset} {count}" for dataset, count in info["datasets"].items())
            + ")"
            for name, info in splits.items()
        ),
        "epochs": str(len(epochs)),
        "finished": _load(work / "pretrain" / "summary.json").get("finished", "finished"),
        "steps": str(sum(int(row["steps"]) for row in epochs)),
        "pretraining_rows": pretraining_rows(work / "pretrain"),
        "ours_test": interval(test["macro"]["auroc"]),
        "ours_valid": interval(valid["macro"]["auroc"]),
        "ours_test_auprc": interval(test["macro"]["auprc"]),
        "baseline_method": baseline["method"],
        "base_test": interval(baseline["test"]["macro"]["auroc"]),
        "base_valid": interval(baseline["valid"]["macro"]["auroc"]),
        "verdict": verdict(test["macro"]["auroc"], baseline["test"]["macro"]["auroc"]),
        "label_rows": label_rows(test, baseline["test"], metrics["thresholds"], gate),
        "pretrain_config": recipe["pretrain"]["config"],
        "ehr_features": ", ".join(metrics["encoder"].get("ehr_features") or [])
        or "no EHR features (vanilla)",
        "monitor_rows": monitor_rows(work / "pretrain"),
        "gate_floor": str(gate.get("min_auroc_lower_bound", 0.5)),
        "gate_summary": gate_summary(gate, metrics["trained_labels"]),
        "controls": controls_section(ROOT / controls if controls else None),
        "untrained": ", ".join(metrics["untrained_labels"]),
        "variant_rows": variant_rows(manifest),
        "calibration": calibration_section(metrics),
        "ood_guard": ood_section(manifest),
    }


OOD_RESULTS = ROOT / "docs" / "results" / "ood-guard.json"


def ood_section(manifest: dict[str, Any], results: Path = OOD_RESULTS) -> str:
    """The out-of-distribution guard: its rule from the manifest, its measurement from
    ``python -m recipes.ood_measure --out docs/results/ood-guard.json`` (docs/ood.md)."""
    guard = manifest.get("ood_guard")
    if not guard:
        return "This model repository has no out-of-distribution guard: it classifies anything that decodes."
    held = guard["threshold_on"]
    lines = [
        f"Images whose out-of-distribution score (Mahalanobis distance of the CLS embedding from a "
        f"Gaussian of the {guard['fitted_on']['images']} training images' embeddings, computed in the "
        f"ONNX graph) is over **{guard['threshold']:.3f}**, or DICOMs whose Modality is not "
        f"{'/'.join(guard['modalities'])} or whose ViewPosition is not one of "
        f"{', '.join(guard['view_positions']) or 'the training views'}, are refused with 422 "
        "`not_a_chest_radiograph` (`CXR_MSN_OOD=warn` serves them with a warning). Threshold: "
        f"{guard['threshold_rule']} (held out: "
        + ", ".join(
            f"{name} {entry['images']} images, max {entry['max']:.2f}" for name, entry in held.items()
        )
        + ").",
    ]
    if not results.is_file():
        lines.append(
            "\nNot measured yet: run `python -m recipes.ood_measure --out docs/results/ood-guard.json`."
        )
        return "\n".join(lines)
    report = _load(results)
    block = report["variants"].get("fp32")
    if block is None:
        return "\n".join(lines)
    if abs(block["threshold"] - guard["threshold"]) > 1e-6:
        lines.append(
            f"\n**Stale measurement:** {results.name} was measured at threshold {block['threshold']:.3f}; "
            "run `python -m recipes.ood_measure --out docs/results/ood-guard.json` again."
        )
    cost = block["cost"]
    lines.append(
        f"\nMeasured end to end through the served fp32 model (docs/ood.md): false rejections on the "
        f"in-distribution test split **{block['false_rejection_test']:.1%}** of {report['test_images']} "
        f"(goal <= 2 %); real chest DICOM films refused {block['chest_dicom_films']['refused']} of "
        f"{block['chest_dicom_films']['files']}; cost {cost['guard_ms_paired_median']:.3f} ms per image "
        f"(median paired difference, {cost['with_guard_ms']:.2f} ms with the guard and "
        f"{cost['without_guard_ms']:.2f} ms without, batch 1, one thread).\n"
    )
    lines.append("| set | files | AUROC vs test | flagged (score or header) |")
    lines.append("|---|---:|---:|---:|")
    for name, row in block["sets"].items():
        auroc = "n/a" if row["auroc"] is None else f"{row['auroc']:.3f}"
        flagged = "n/a" if row["flagged"] is None else f"{row['flagged']:.0%}"
        lines.append(f"| {name} | {row['files']} | {auroc} | {flagged} |")
    passing = [
        f"{name} ({1 - row['flagged']:.0%} pass)"
        for name, row in block["sets"].items()
        if row["flagged"] is not None and row["flagged"] < 0.9
    ]
    lines.append(
        "\nWhat it still lets through (sets where under 90 % are flagged): "
        + "; ".join(passing)
        + ". A CT or MR slice is refused by its DICOM Modality; as a PNG only its score would judge it."
    )
    return "\n".join(lines)


def head_protocol(head: dict[str, Any]) -> str:
    """How the linear head was trained, from linear-eval's config.json."""
    features = "standardized" if head.get("features") == "standardized" else "raw"
    if head.get("solver") == "logistic":
        cs = ", ".join(f"{c:g}" for c in head["logistic_cs"])
        return (
            f"one L2-regularised logistic regression per label on {features} embeddings of every "
            f"training view, C from {cs} chosen by validation macro AUROC"
        )
    return f"the paper's linear-evaluation protocol on {features} embeddings (five Adam runs)"


def write_model_card(work: Path, repository: Path, recipe: dict[str, Any], out: Path) -> None:
    atomic_write_text(out, TEMPLATE.read_text().format(**fields(work, repository, recipe)))
