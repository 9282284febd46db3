"""Vanilla MSN against MSN + EHR variants: pretrain and linearly evaluate each on the same data
and seeds, then one table with CIs laid out like the paper's Tables 3 and 4.

Folder (``out``)::

    config.json                       the experiment (variants, seed, overrides)
    <backbone>-<variant>/pretrain/    a pretraining run folder (training.pretrain)
    <backbone>-<variant>/linear/      a linear-evaluation folder (training.downstream.linear_eval)
    <backbone>-<variant>/timing.json  wall time of each stage
    results.json, results.md          the table, and each variant's paired comparison with the first

Each variant uses the named config for its backbone and EHR features (the paper's ``vit_t-D``
..., or the ``small-D`` recipe for ``backbone="small"``), the
same ``train.seed`` and the same manifest; linear evaluation reads the manifest the encoder was
pretrained on (``data.source=encoder``), so every variant has the same patient splits. A stage
whose output is complete is skipped and an interrupted pretraining is resumed, so a killed
experiment continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cxrmsn.fileio import atomic_write_text
from training.config import PretrainConfig, apply_overrides
from training.configs import ARCHITECTURES, VARIANTS, named_config
from training.downstream.compare import compare_runs
from training.downstream.config import DownstreamConfig
from training.run_folder import code_version, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Experiment:
    backbone: str = "vit_t"  # vit_t, vit_s (the paper's configs) or small (the small-<variant> recipes)
    variants: tuple[str, ...] = ("vanilla", "D")  # the first is the baseline of the comparisons
    seed: int = 0
    data: tuple[str, ...] = ()  # pretraining overrides that choose the data (data.source=..., ...)
    pretrain_overrides: tuple[str, ...] = ()
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def __post_init__(self) -> None:
        if self.backbone not in (*ARCHITECTURES, "small"):
            raise ValueError(f"unknown backbone {self.backbone!r}; known: {[*ARCHITECTURES, 'small']}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or len(set(self.variants)) != len(self.variants) or not self.variants:
            raise ValueError(f"variants must be distinct names of {sorted(VARIANTS)}, got {self.variants}")

    def pretrain_config(self, variant: str) -> PretrainConfig:
        base = named_config(f"{self.backbone}-{variant}")
        return apply_overrides(base, [*self.data, f"train.seed={self.seed}", *self.pretrain_overrides])

    def downstream_config(self) -> DownstreamConfig:
        return replace(
            self.downstream,
            seed=self.seed,
            data=replace(self.downstream.data, source="encoder"),
        )

    def to_dict(self) -> dict[str, Any]:
        from training.config import to_dict

        return {
            "backbone": self.backbone,
            "variants": list(self.variants),
            "seed": self.seed,
            "data": list(self.data),
            "pretrain_overrides": list(self.pretrain_overrides),
            "downstream": to_dict(self.downstream_config()),
        }


def claim_folder(out: Path, config: dict[str, Any], what: str) -> None:
    """Create ``out`` for ``config`` (or continue it), refusing a folder that holds another one."""
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()) != config:
        raise ValueError(f"{out} holds another {what} (config.json differs): choose another --out")
    write_json(config_file, config)
    write_json(out / "version.json", code_version())


def run_experiment(experiment: Experiment, out: Path) -> dict[str, Any]:
    """Every variant's pretraining and linear evaluation (resumable), then the table."""
    claim_folder(out, experiment.to_dict(), "experiment")
    for variant in experiment.variants:
        run_variant(experiment, variant, out / f"{experiment.backbone}-{variant}")
    results = collect_results(experiment, out)
    write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    return results


def run_variant(experiment: Experiment, variant: str, folder: Path) -> None:
    from training.downstream.linear_eval import linear_eval
    from training.pretrain import pretrain, resume

    timing_file = folder / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    pretrain_dir, linear_dir = folder / "pretrain", folder / "linear"
    if not (pretrain_dir / "summary.json").is_file():
        started = time.perf_counter()
        if (pretrain_dir / "config.json").is_file():
            resume(pretrain_dir)
        else:
            pretrain(experiment.pretrain_config(variant), pretrain_dir)
        timing["pretrain_s"] = timing.get("pretrain_s", 0.0) + round(time.perf_counter() - started, 1)
        write_json(timing_file, timing)
    if not (linear_dir / "metrics.json").is_file():
        started = time.perf_counter()
        linear_eval(pretrain_dir, experiment.downstream_config(), linear_dir)
        timing["linear_eval_s"] = round(time.perf_counter() - started, 1)
        write_json(timing_file, timing)


def collect_results(experiment: Experiment, out: Path) -> dict[str, Any]:
    rows = []
    baseline_dir = out / f"{experiment.backbone}-{experiment.variants[0]}"
    for variant in experiment.variants:
        folder = out / f"{experiment.backbone}-{variant}"
        metrics = json.loads((folder / "linear" / "metrics.json").read_text())
        summary = json.loads((folder / "pretrain" / "summary.json").read_text())
        timing_file = folder / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
        row: dict[str, Any] = {
            "variant": variant,
            "ehr_features": metrics["encoder"].get("ehr_features"),
            "pretrain_epochs": summary["epochs"],
            "pretrain_final_loss": summary["final_loss"],
            "selected_run": metrics["selected_run"],
            "valid_macro_auroc": metrics["valid"]["macro"]["auroc"],
            "test_macro_auroc": metrics["test"]["macro"]["auroc"],
            "test_macro_auprc": metrics["test"]["macro"]["auprc"],
            "test_macro_labels": metrics["test"]["macro"]["labels"],
            "test_images": metrics["test"]["images"],
            "timing_s": timing,
        }
        if variant != experiment.variants[0]:
            row["vs_baseline"] = compare_runs(
                folder / "linear", baseline_dir / "linear", settings=experiment.downstream.metrics.bootstrap()
            )
        rows.append(row)
    return {
        "backbone": experiment.backbone,
        "baseline": experiment.variants[0],
        "seed": experiment.seed,
        "rows": rows,
    }


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "not estimable"
    ci = entry.get("ci")
    return f"{entry['value']:.3f} ({ci[0]:.3f} to {ci[1]:.3f})" if ci else f"{entry['value']:.3f} (no CI)"


def results_markdown(results: dict[str, Any]) -> str:
    """The table, laid out like the paper's Tables 3 and 4 (one backbone, test split)."""
    lines = [
        f"Linear evaluation on the test split, backbone {results['backbone']}, seed {results['seed']}; "
        "macro over the labels with training signal that are estimable on test; 95 % percentile "
        "bootstrap CIs (1,000 image resamples unless configured otherwise).",
        "",
        "| Backbone | Pretraining | Epochs | AUROC (95 % CI) | AUPRC (95 % CI) | "
        f"Δ AUROC vs {results['baseline']} (95 % CI) | p (paired bootstrap) | p (t-test over labels) |",
        "|---|---|---:|---|---|---|---:|---:|",
    ]
    for row in results["rows"]:
        name = "MSN (vanilla)" if row["variant"] == "vanilla" else f"MSN + {row['variant']}"
        comparison = row.get("vs_baseline")
        if comparison:
            diff = comparison["difference"]
            delta = _ci(diff)
            p_boot = diff.get("p_value_two_sided")
            p_t = comparison["t_test"].get("p_value")
            p_text = f"{p_boot:.3f}" if p_boot is not None else "-"
            t_text = f"{p_t:.3f}" if p_t is not None else "-"
        else:
            delta, p_text, t_text = "(baseline)", "-", "-"
        lines.append(
            f"| {results['backbone']} | {name} | {row['pretrain_epochs']} | {_ci(row['test_macro_auroc'])} | "
            f"{_ci(row['test_macro_auprc'])} | {delta} | {p_text} | {t_text} |"
        )
    labels = results["rows"][0]["test_macro_labels"]
    lines += ["", f"Macro labels ({len(labels)}): {', '.join(labels)}.", ""]
    return "\n".join(lines)
