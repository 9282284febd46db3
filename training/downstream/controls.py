"""MSN variants against controls, over several seeds: does pretraining beat random weights?

For every seed, ``run_experiment`` pretrains and linearly evaluates each MSN variant (one
manifest per seed: ``data.source=shared`` splits the COVID patients with the seed), then on
that same manifest and patient splits the controls:

- ``random``: the same architecture, randomly initialised with the seed (the very weights
  pretraining starts from), evaluated by the same linear protocol;
- ``supervised``: that random encoder fine-tuned end to end on 100 % of the training labels
  (``finetune``), the supervised-from-scratch reference: one cosine run by default
  (``finetune_runs="single"``, a CPU budget), or the paper's five-run grid (``"grid"``);
- ``pixels``: logistic regression on a PCA of 32 x 32 pixels (``training.downstream.pixels``).

Every arm is compared with the seed's ``random`` arm on the same test images by a paired
bootstrap of the macro AUROC difference (``compare_runs``). ``results.md`` has one row per arm
and seed and one summary row per arm: the mean over seeds, how many seeds are above random,
how many of those significantly (p < 0.05).

Folder (``out``)::

    config.json
    seed<N>/                         an experiment folder (training.downstream.experiment)
    seed<N>/controls/random/         encoder.safetensors + linear/ (a linear-evaluation run)
    seed<N>/controls/supervised/     a fine-tuning folder (fraction_1/ is the run)
    seed<N>/controls/pixels/         metrics.json + predictions/
    results.json, results.md

Stages whose output is complete are skipped, so a killed run continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cxrmsn.fileio import atomic_write_text
from training.downstream.compare import compare_runs
from training.downstream.config import DownstreamConfig, FinetuneConfig
from training.downstream.estimates import format_estimate
from training.downstream.experiment import Experiment, claim_folder, run_experiment
from training.downstream.random_encoder import write_random_encoder
from training.downstream.run_metrics import METRICS_FILE, RunMetrics
from training.run_folder import write_json

log = logging.getLogger(__name__)

CONTROLS = ("random", "supervised", "pixels")
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class ControlExperiment:
    experiment: Experiment  # variants, data, overrides, linear protocol; its ``seed`` is replaced per seed
    seeds: tuple[int, ...] = (0, 1, 2)
    controls: tuple[str, ...] = CONTROLS
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(fractions=(1.0,), max_epochs=30))
    finetune_runs: str = "single"  # the supervised control: one cosine run, or the paper's "grid"

    def __post_init__(self) -> None:
        if self.finetune_runs not in ("grid", "single"):
            raise ValueError(f"finetune_runs must be grid or single, got {self.finetune_runs!r}")
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown or len(set(self.controls)) != len(self.controls):
            raise ValueError(f"controls must be distinct names of {CONTROLS}, got {self.controls}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        if self.finetune.fractions != (1.0,):
            raise ValueError("the supervised control trains on 100 % of the labels: finetune.fractions=1")

    def to_dict(self) -> dict[str, Any]:
        from training.config import to_dict

        return {
            "experiment": self.experiment.to_dict(),
            "seeds": list(self.seeds),
            "controls": list(self.controls),
            "finetune": to_dict(self.finetune),
            **({"finetune_runs": self.finetune_runs} if self.finetune_runs != "single" else {}),
        }


def run_controls(setup: ControlExperiment, out: Path) -> dict[str, Any]:
    """Every seed's MSN variants and controls (resumable), then the table."""
    claim_folder(out, setup.to_dict(), "control experiment")
    for seed in setup.seeds:
        experiment = replace(setup.experiment, seed=seed)
        run_experiment(experiment, out / f"seed{seed}")
        run_seed_controls(setup, experiment, out / f"seed{seed}")
    results = collect(setup, out)
    write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    return results


def _variant_dir(experiment: Experiment, variant: str, seed_dir: Path) -> Path:
    return seed_dir / f"{experiment.backbone}-{variant}"


def run_seed_controls(setup: ControlExperiment, experiment: Experiment, seed_dir: Path) -> None:
    pretrain_dir = _variant_dir(experiment, experiment.variants[0], seed_dir) / "pretrain"
    folder = seed_dir / "controls"
    downstream = experiment.downstream_config()
    timing_file = folder / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    encoder = folder / "random" / "encoder.safetensors"
    seed = int(json.loads((pretrain_dir / "config.json").read_text())["train"]["seed"])
    for control in setup.controls:
        done = {
            "random": folder / "random" / "linear" / METRICS_FILE,
            "supervised": folder / "supervised" / "summary.json",
            "pixels": folder / "pixels" / METRICS_FILE,
        }[control]
        if done.is_file():
            continue
        started = time.perf_counter()
        if control in ("random", "supervised") and not encoder.is_file():
            write_random_encoder(pretrain_dir, encoder, seed=seed)
        if control == "random":
            from training.downstream.linear_eval import linear_eval

            linear_eval(encoder, downstream, folder / "random" / "linear")
        elif control == "supervised":
            from training.downstream.finetune import finetune

            finetune(
                encoder,
                _supervised_config(downstream, setup.finetune),
                folder / "supervised",
                runs=setup.finetune_runs,
            )
        else:
            from training.downstream.pixels import pixel_baseline

            pixel_baseline(
                _manifest(pretrain_dir / "checkpoints" / "encoder.safetensors"),
                folder / "pixels",
                seed=experiment.seed,
                settings=downstream.metrics.bootstrap(),
                labels=downstream.labels,
            )
        timing[f"{control}_s"] = round(time.perf_counter() - started, 1)
        write_json(timing_file, timing)


def _supervised_config(downstream: DownstreamConfig, finetune: FinetuneConfig) -> DownstreamConfig:
    return replace(downstream, finetune=finetune)


def _manifest(encoder: Path) -> Path:
    from cxrmsn.checkpoint import read_metadata

    return Path(read_metadata(encoder).training_data["manifest"])


def arm_runs(setup: ControlExperiment, seed_dir: Path) -> dict[str, Path]:
    """Arm name -> the run folder holding its metrics.json and predictions/ (test)."""
    experiment = setup.experiment
    runs = {
        f"msn-{variant}": _variant_dir(experiment, variant, seed_dir) / "linear"
        for variant in experiment.variants
    }
    controls = seed_dir / "controls"
    paths = {
        "random": controls / "random" / "linear",
        "supervised": controls / "supervised" / "fraction_1",
        "pixels": controls / "pixels",
    }
    runs.update({control: paths[control] for control in setup.controls})
    return runs


def collect(setup: ControlExperiment, out: Path) -> dict[str, Any]:
    settings = setup.experiment.downstream.metrics.bootstrap()
    rows = []
    for seed in setup.seeds:
        runs = arm_runs(setup, out / f"seed{seed}")
        reference, pixels = runs.get("random"), runs.get("pixels")
        for arm, run in runs.items():
            metrics = RunMetrics.read(run)
            row: dict[str, Any] = {
                "arm": arm,
                "seed": seed,
                "run": str(run),
                "valid_macro_auroc": metrics.macro("valid")["auroc"],
                "test_macro_auroc": metrics.macro("test")["auroc"],
                "test_macro_auprc": metrics.macro("test")["auprc"],
                "test_macro_labels": metrics.macro("test")["labels"],
                "test_images": metrics.split("test")["images"],
            }
            if reference is not None and arm != "random":
                row["vs_random"] = compare_runs(run, reference, settings=settings)
            if pixels is not None and arm.startswith("msn-"):
                row["vs_pixels"] = compare_runs(run, pixels, settings=settings)
            rows.append(row)
    return {"seeds": list(setup.seeds), "rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm: mean (and range) of the test macro AUROC over seeds; seeds above random."""
    arms = list(dict.fromkeys(row["arm"] for row in rows))
    summary = []
    for arm in arms:
        mine = [row for row in rows if row["arm"] == arm]
        values = [row["test_macro_auroc"]["value"] for row in mine if row["test_macro_auroc"]]
        entry: dict[str, Any] = {
            "arm": arm,
            "seeds": len(mine),
            "mean_test_macro_auroc": statistics.fmean(values) if values else None,
            "min_test_macro_auroc": min(values) if values else None,
            "max_test_macro_auroc": max(values) if values else None,
        }
        differences = [row["vs_random"]["difference"] for row in mine if "vs_random" in row]
        if differences:
            p_values = [d.get("p_value_two_sided") for d in differences]
            entry["mean_difference_vs_random"] = statistics.fmean(d["value"] for d in differences)
            entry["seeds_above_random"] = sum(d["value"] > 0 for d in differences)
            entry["seeds_significantly_above_random"] = sum(
                d["value"] > 0 and p is not None and p < SIGNIFICANCE
                for d, p in zip(differences, p_values, strict=True)
            )
            entry["max_p_value"] = max((p for p in p_values if p is not None), default=None)
        summary.append(entry)
    return summary


def _delta_p(comparison: dict[str, Any] | None) -> str:
    if not comparison:
        return "-"
    difference = comparison["difference"]
    p = difference.get("p_value_two_sided")
    return f"{difference['value']:+.3f} ({'-' if p is None else f'{p:.3f}'})"


def _estimate(entry: dict[str, Any] | None) -> str:
    return format_estimate(entry, style="brackets", no_ci="(no CI)")


ARM_NAMES = {
    "random": "random-init encoder, linear probe",
    "supervised": "supervised from scratch (fine-tuned, 100 % labels)",
    "pixels": "pixel baseline (PCA 32 + logistic)",
}


def arm_name(arm: str) -> str:
    if arm.startswith("msn-"):
        variant = arm.removeprefix("msn-")
        return "MSN (vanilla), linear probe" if variant == "vanilla" else f"MSN + {variant}, linear probe"
    return ARM_NAMES.get(arm, arm)


def results_markdown(results: dict[str, Any]) -> str:
    lines = [
        "Test split, macro AUROC over the labels with training signal estimable on test; 95 % "
        "percentile bootstrap CIs over images; Δ = arm - random-init encoder on the same test images "
        "(paired bootstrap, two-sided p); for the MSN arms also Δ against the pixel baseline.",
        "",
        "| Arm | Seed | Valid AUROC | Test AUROC (95 % CI) | Test AUPRC (95 % CI) | "
        "Δ AUROC vs random (95 % CI) | p | Δ vs pixels (p) |",
        "|---|---:|---:|---|---|---|---:|---|",
    ]
    for row in results["rows"]:
        comparison = row.get("vs_random")
        delta, p_text = ("(reference)" if row["arm"] == "random" else "-"), "-"
        if comparison:
            delta = _estimate(comparison["difference"])
            p = comparison["difference"].get("p_value_two_sided")
            p_text = f"{p:.3f}" if p is not None else "-"
        valid = row["valid_macro_auroc"]
        valid_text = f"{valid['value']:.3f}" if valid else "-"
        lines.append(
            f"| {arm_name(row['arm'])} | {row['seed']} | {valid_text} | "
            f"{_estimate(row['test_macro_auroc'])} | {_estimate(row['test_macro_auprc'])} | "
            f"{delta} | {p_text} | "
            f"{_delta_p(row.get('vs_pixels'))} |"
        )
    lines += [
        "",
        "| Arm | Seeds | Mean test AUROC (min-max) | Mean Δ vs random | Seeds above random | "
        "of them p < 0.05 |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for entry in results["summary"]:
        mean = entry["mean_test_macro_auroc"]
        spread = (
            f"{mean:.3f} ({entry['min_test_macro_auroc']:.3f}-{entry['max_test_macro_auroc']:.3f})"
            if mean is not None
            else "-"
        )
        if "mean_difference_vs_random" in entry:
            delta = f"{entry['mean_difference_vs_random']:+.3f}"
            above = f"{entry['seeds_above_random']}/{entry['seeds']}"
            significant = f"{entry['seeds_significantly_above_random']}/{entry['seeds']}"
        else:
            delta, above, significant = ("(reference)" if entry["arm"] == "random" else "-"), "-", "-"
        lines.append(
            f"| {arm_name(entry['arm'])} | {entry['seeds']} | {spread} | {delta} | {above} | {significant} |"
        )
    labels = results["rows"][0]["test_macro_labels"] if results["rows"] else []
    lines += ["", f"Macro labels ({len(labels)}): {', '.join(labels)}.", ""]
    return "\n".join(lines)
