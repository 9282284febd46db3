"""Vanilla MSN against MSN + EHR variants and the paper's baselines: pretrain and evaluate each
on the same data and seeds, then one table with CIs laid out like the paper's Tables 3 and 4.

Folder (``out``)::

    config.json                       the experiment (variants, baselines, seed, overrides)
    <backbone>-<variant>/pretrain/    a pretraining run folder (training.pretrain)
    <backbone>-<variant>/linear/      a linear-evaluation folder (training.downstream.linear_eval)
    <backbone>-<variant>/timing.json  wall time of each stage
    <backbone>-dino/, <backbone>-mae/ the same for the DINO and MAE baselines (``method`` dino, mae)
    <backbone>-supervised/            encoder.safetensors (random init) + finetune/ (100 % labels)
    <backbone>-supervised-imagenet/   finetune/: the user's ImageNet encoder fine-tuned (100 % labels)
    results.json, results.md          the table, and each row's paired comparison with the first

Each variant uses the named config for its backbone and EHR features (the paper's ``vit_t-D``
..., or the ``small-D`` recipe for ``backbone="small"``), each pretraining baseline the
backbone's ``-dino`` / ``-mae`` config (training.configs), all with the same ``train.seed``
and the same manifest; linear evaluation reads the manifest the encoder was pretrained on
(``data.source=encoder``), so every row has the same patient splits. Linear evaluation reads
the encoder of the last pretraining epoch (``pretrain_weights="last"``, the default) or that
of the lowest training loss (``"best_loss"``, what the paper's early stopping kept).

The supervised baselines (the paper's Table 3) are fine-tuned, not probed: ``supervised``
starts from the random initialisation MSN starts from (``random_encoder.write_random_encoder``),
``supervised-imagenet`` from ImageNet weights the user imported (``cxr-msn import-weights
--format timm``; nothing can be downloaded here), both on 100 % of the training labels with
the downstream config's ``finetune`` section and ``finetune_runs`` (the paper's five-run grid,
or one run). A stage whose output is complete is skipped and an interrupted pretraining is
resumed, so a killed experiment continues where it stopped.
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
from training.configs import ARCHITECTURES, PRETRAIN_BASELINES, VARIANTS, named_config
from training.downstream.compare import compare_runs
from training.downstream.config import DownstreamConfig
from training.downstream.estimates import format_estimate
from training.downstream.random_encoder import write_random_encoder
from training.downstream.run_metrics import METRICS_FILE, RunMetrics
from training.run_folder import code_version, write_json

log = logging.getLogger(__name__)

#: Table 3's baselines: pretrained by DINO or MAE (then probed like MSN), or supervised (fine-tuned).
SUPERVISED_BASELINES = ("supervised", "supervised-imagenet")
BASELINES = (*PRETRAIN_BASELINES, *SUPERVISED_BASELINES)
PRETRAIN_WEIGHTS = ("last", "best_loss")


@dataclass(frozen=True)
class Experiment:
    backbone: str = "vit_t"  # vit_t, vit_s (the paper's configs) or small (the small-<variant> recipes)
    variants: tuple[str, ...] = ("vanilla", "D")  # the first is the baseline of the comparisons
    seed: int = 0
    data: tuple[str, ...] = ()  # pretraining overrides that choose the data (data.source=..., ...)
    pretrain_overrides: tuple[str, ...] = ()
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    baselines: tuple[str, ...] = ()  # of BASELINES, rows after the variants
    pretrain_weights: str = "last"  # the encoder linear evaluation reads: last or best_loss epoch
    finetune_runs: str = "grid"  # the supervised baselines: the paper's five runs, or "single"
    imagenet_encoder: str = ""  # an imported ImageNet encoder (kind encoder), for supervised-imagenet

    def __post_init__(self) -> None:
        if self.backbone not in (*ARCHITECTURES, "small"):
            raise ValueError(f"unknown backbone {self.backbone!r}; known: {[*ARCHITECTURES, 'small']}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or len(set(self.variants)) != len(self.variants) or not self.variants:
            raise ValueError(f"variants must be distinct names of {sorted(VARIANTS)}, got {self.variants}")
        if any(b not in BASELINES for b in self.baselines) or len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"baselines must be distinct names of {list(BASELINES)}, got {self.baselines}")
        if self.pretrain_weights not in PRETRAIN_WEIGHTS:
            raise ValueError(
                f"pretrain_weights must be one of {PRETRAIN_WEIGHTS}, got {self.pretrain_weights!r}"
            )
        if self.finetune_runs not in ("grid", "single"):
            raise ValueError(f"finetune_runs must be grid or single, got {self.finetune_runs!r}")
        if ("supervised-imagenet" in self.baselines) != bool(self.imagenet_encoder):
            raise ValueError(
                "the supervised-imagenet baseline needs imagenet_encoder (an encoder imported with "
                "`cxr-msn import-weights --format timm`), and imagenet_encoder needs that baseline"
            )

    @property
    def rows(self) -> tuple[str, ...]:
        """Every row of the table in order: the variants, then the baselines."""
        return (*self.variants, *self.baselines)

    def folder(self, row: str) -> str:
        return f"{self.backbone}-{row}"

    def pretrain_config(self, variant: str) -> PretrainConfig:
        """The pretraining config of a variant or of a pretraining baseline (dino, mae)."""
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
            # only when set: an experiment folder of an earlier version continues unchanged
            **({"baselines": list(self.baselines)} if self.baselines else {}),
            **({"pretrain_weights": self.pretrain_weights} if self.pretrain_weights != "last" else {}),
            **({"finetune_runs": self.finetune_runs} if self.supervised else {}),
            **({"imagenet_encoder": self.imagenet_encoder} if self.imagenet_encoder else {}),
        }

    @property
    def supervised(self) -> tuple[str, ...]:
        return tuple(b for b in self.baselines if b in SUPERVISED_BASELINES)

    def finetune_config(self) -> DownstreamConfig:
        """The supervised baselines' config: the downstream one on 100 % of the training labels."""
        downstream = self.downstream_config()
        return replace(downstream, finetune=replace(downstream.finetune, fractions=(1.0,)))


def claim_folder(out: Path, config: dict[str, Any], what: str) -> None:
    """Create ``out`` for ``config`` (or continue it), refusing a folder that holds another one."""
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()) != config:
        raise ValueError(f"{out} holds another {what} (config.json differs): choose another --out")
    write_json(config_file, config)
    write_json(out / "version.json", code_version())


def run_experiment(experiment: Experiment, out: Path) -> dict[str, Any]:
    """Every row's pretraining and evaluation (resumable), then the table."""
    claim_folder(out, experiment.to_dict(), "experiment")
    for row in experiment.rows:
        folder = out / experiment.folder(row)
        if row in SUPERVISED_BASELINES:
            run_supervised(experiment, row, folder, out / experiment.folder(experiment.variants[0]))
        else:
            run_variant(experiment, row, folder)
    results = collect_results(experiment, out)
    write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    return results


def _timing(folder: Path) -> dict[str, Any]:
    timing_file = folder / "timing.json"
    return json.loads(timing_file.read_text()) if timing_file.is_file() else {}


def encoder_file(pretrain_dir: Path, weights: str) -> Path:
    """The encoder checkpoint of a pretraining run: the last epoch's or the best-loss one."""
    from training.run_folder import ENCODER_FILES

    return pretrain_dir / "checkpoints" / ENCODER_FILES[weights]


def run_variant(experiment: Experiment, variant: str, folder: Path) -> None:
    """Pretrain (or resume) a variant or a DINO / MAE baseline, then evaluate it linearly."""
    from training.downstream.linear_eval import linear_eval
    from training.pretrain import pretrain, resume

    timing = _timing(folder)
    pretrain_dir, linear_dir = folder / "pretrain", folder / "linear"
    if not (pretrain_dir / "summary.json").is_file():
        started = time.perf_counter()
        if (pretrain_dir / "config.json").is_file():
            resume(pretrain_dir)
        else:
            pretrain(experiment.pretrain_config(variant), pretrain_dir)
        timing["pretrain_s"] = timing.get("pretrain_s", 0.0) + round(time.perf_counter() - started, 1)
        write_json(folder / "timing.json", timing)
    if not (linear_dir / METRICS_FILE).is_file():
        started = time.perf_counter()
        encoder = encoder_file(pretrain_dir, experiment.pretrain_weights)
        linear_eval(encoder, experiment.downstream_config(), linear_dir)
        timing["linear_eval_s"] = round(time.perf_counter() - started, 1)
        write_json(folder / "timing.json", timing)


def run_supervised(experiment: Experiment, baseline: str, folder: Path, reference: Path) -> None:
    """Fine-tune from random initialisation (``supervised``) or from the user's ImageNet encoder
    (``supervised-imagenet``) on 100 % of the labels; the data and splits are those of the
    first variant (``reference``), which runs first."""
    from training.downstream.finetune import finetune

    if (folder / "finetune" / "summary.json").is_file():
        return
    timing = _timing(folder)
    started = time.perf_counter()
    pretrain_dir = reference / "pretrain"
    config = experiment.finetune_config()
    if baseline == "supervised":
        encoder = folder / "encoder.safetensors"
        if not encoder.is_file():
            write_random_encoder(pretrain_dir, encoder, seed=experiment.seed)
    else:
        encoder = Path(experiment.imagenet_encoder).expanduser()
        config = _on_manifest_of(config, pretrain_dir, encoder)
    finetune(encoder, config, folder / "finetune", runs=experiment.finetune_runs)
    timing["finetune_s"] = timing.get("finetune_s", 0.0) + round(time.perf_counter() - started, 1)
    write_json(folder / "timing.json", timing)


def _on_manifest_of(config: DownstreamConfig, pretrain_dir: Path, encoder: Path) -> DownstreamConfig:
    """``config`` reading the manifest ``pretrain_dir``'s encoder was pretrained on (an imported
    encoder names none), after checking that ``encoder`` has that encoder's architecture."""
    from cxrmsn.checkpoint import read_metadata

    reference = read_metadata(pretrain_dir / "checkpoints" / "encoder.safetensors")
    imported = read_metadata(encoder)
    if imported.kind != "encoder" or imported.architecture != reference.architecture:
        raise ValueError(
            f"{encoder} holds a {imported.architecture} {imported.kind}; the experiment's backbone is a "
            f"{reference.architecture} encoder (import it with `cxr-msn import-weights --kind encoder "
            f"--arch {reference.architecture}`)"
        )
    data = replace(config.data, source="manifest", manifest=reference.training_data["manifest"])
    return replace(config, data=data)


def row_run(experiment: Experiment, out: Path, row: str) -> Path:
    """The folder holding a row's metrics.json and predictions/ (test)."""
    folder = out / experiment.folder(row)
    return folder / "finetune" / "fraction_1" if row in SUPERVISED_BASELINES else folder / "linear"


def collect_results(experiment: Experiment, out: Path) -> dict[str, Any]:
    rows = []
    baseline_run = row_run(experiment, out, experiment.variants[0])
    for name in experiment.rows:
        folder = out / experiment.folder(name)
        run = row_run(experiment, out, name)
        metrics = RunMetrics.read(run)
        supervised = name in SUPERVISED_BASELINES
        summary = {} if supervised else json.loads((folder / "pretrain" / "summary.json").read_text())
        row: dict[str, Any] = {
            "variant": name,
            "method": name if name in BASELINES else "msn",
            "protocol": "finetune (100 % labels)" if supervised else "linear",
            "ehr_features": (metrics.encoder or {}).get("ehr_features") or [],
            "pretrain_epochs": summary.get("epochs"),
            "pretrain_final_loss": summary.get("final_loss"),
            "pretrain_weights": None if supervised else experiment.pretrain_weights,
            "selected_run": metrics.selected_run,
            "valid_macro_auroc": metrics.macro("valid")["auroc"],
            "test_macro_auroc": metrics.macro("test")["auroc"],
            "test_macro_auprc": metrics.macro("test")["auprc"],
            "test_macro_labels": metrics.macro("test")["labels"],
            "test_images": metrics.split("test")["images"],
            "timing_s": _timing(folder),
        }
        if name != experiment.variants[0]:
            row["vs_baseline"] = compare_runs(
                run, baseline_run, settings=experiment.downstream.metrics.bootstrap()
            )
        rows.append(row)
    return {
        "backbone": experiment.backbone,
        "baseline": experiment.variants[0],
        "seed": experiment.seed,
        "rows": rows,
    }


ROW_NAMES = {
    "dino": "DINO",
    "mae": "MAE",
    "supervised": "Supervised, random init (fine-tuned)",
    "supervised-imagenet": "Supervised, ImageNet init (fine-tuned)",
}


def row_name(row: dict[str, Any]) -> str:
    variant = row["variant"]
    if variant in ROW_NAMES:
        return ROW_NAMES[variant]
    return "MSN (vanilla)" if variant == "vanilla" else f"MSN + {variant}"


def timing_markdown(results: dict[str, Any]) -> list[str]:
    """Wall time of each row's stages (seconds), below the table."""
    lines = [
        "",
        "| Pretraining | Protocol | Pretraining (s) | Evaluation (s) | Total (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for row in results["rows"]:
        timing = row.get("timing_s") or {}
        pretrain = timing.get("pretrain_s")
        evaluate = timing.get("linear_eval_s", timing.get("finetune_s"))
        total = sum(v for v in (pretrain, evaluate) if v is not None)
        lines.append(
            f"| {row_name(row)} | {row.get('protocol', 'linear')} | "
            f"{'-' if pretrain is None else f'{pretrain:.0f}'} | "
            f"{'-' if evaluate is None else f'{evaluate:.0f}'} | {total:.0f} |"
        )
    return lines


def _ci(entry: dict[str, Any] | None) -> str:
    return format_estimate(entry, no_ci="(no CI)")


def results_markdown(results: dict[str, Any]) -> str:
    """The table, laid out like the paper's Tables 3 and 4 (one backbone, test split)."""
    policy = f", label policy {results['label_policy']}" if "label_policy" in results else ""
    lines = [
        f"Linear evaluation on the test split, backbone {results['backbone']}, seed {results['seed']}"
        f"{policy}; macro over the labels with training signal that are estimable on test; 95 % percentile "
        "bootstrap CIs (1,000 image resamples unless configured otherwise).",
        "",
        "| Backbone | Pretraining | Epochs | AUROC (95 % CI) | AUPRC (95 % CI) | "
        f"Δ AUROC vs {results['baseline']} (95 % CI) | p (paired bootstrap) | p (t-test over labels) |",
        "|---|---|---:|---|---|---|---:|---:|",
    ]
    for row in results["rows"]:
        name = row_name(row)
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
        epochs = "-" if row["pretrain_epochs"] is None else row["pretrain_epochs"]
        lines.append(
            f"| {results['backbone']} | {name} | {epochs} | {_ci(row['test_macro_auroc'])} | "
            f"{_ci(row['test_macro_auprc'])} | {delta} | {p_text} | {t_text} |"
        )
    labels = results["rows"][0]["test_macro_labels"]
    lines += ["", f"Macro labels ({len(labels)}): {', '.join(labels)}."]
    if any(row.get("protocol", "linear") != "linear" for row in results["rows"]):
        lines.append(
            "Pretrained rows: a linear probe of the frozen encoder; supervised rows: the whole ViT "
            "fine-tuned on 100 % of the training labels (the paper's supervised baselines)."
        )
    weights = {row.get("pretrain_weights") for row in results["rows"]} - {None}
    if weights:
        lines.append(f"Pretrained encoders read: {', '.join(sorted(weights))} epoch (pretrain_weights).")
    lines += timing_markdown(results)
    lines.append("")
    return "\n".join(lines)
