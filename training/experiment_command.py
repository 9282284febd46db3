"""Pretrain and linearly evaluate vanilla MSN against MSN + EHR variants and the paper's baselines.

Examples:
  cxr-msn experiment --out runs/exp-shared --variants vanilla,D --pretrain-set train.epochs=2
  cxr-msn experiment --out runs/exp-smoke --preset smoke
  cxr-msn experiment --out runs/table3 --backbone small --variants vanilla,D --baselines dino,mae,supervised
  cxr-msn experiment --out runs/t3 --manifest mimic.csv --baselines dino,mae,supervised,supervised-imagenet \
      --imagenet-encoder vit_t_in1k.safetensors   # from `cxr-msn import-weights --format timm`
  cxr-msn experiment --out runs/exp-mimic --manifest mimic.csv --backbone vit_s --variants vanilla,sex,D,all
  cxr-msn experiment --out runs/controls --backbone small --variants vanilla,D --seeds 0,1,2 \
      --controls random,supervised,pixels

Each variant is the paper's config for the backbone (vit_t-<variant>, vit_s-<variant>) with
the same train.seed and data; its encoder is evaluated by the paper's linear protocol on the
manifest it was pretrained on (the same patient splits for every variant). Prints the table
(test macro AUROC and AUPRC with 95 % CIs, the difference to the first variant with a paired
bootstrap CI and p-value, and a paired t-test over labels) and writes OUT/results.{json,md}.
Rerunning with the same options continues an interrupted experiment.

--baselines adds the rows of the paper's Table 3: dino and mae (the backbone's -dino / -mae
pretraining configs, then the same linear protocol), supervised (the random initialisation
fine-tuned on 100 % of the training labels) and supervised-imagenet (an imported ImageNet
encoder fine-tuned the same way); --finetune-runs chooses the paper's five-run grid (default)
or one run. --encoder-weights chooses which pretrained encoder linear evaluation reads: the
last epoch's (default) or the lowest training loss's (the paper's early-stopping choice).

With --controls (or several --seeds), every seed also evaluates, on the same manifest and
patient splits, a randomly initialised encoder of the same architecture (the weights MSN
starts from), that encoder fine-tuned on 100 % of the training labels (supervised from
scratch) and a 32 x 32 pixel baseline; every arm is compared with the random-init encoder
by a paired bootstrap (training.downstream.controls).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.downstream.controls import ControlExperiment
    from training.downstream.experiment import Experiment

HELP = (
    "pretrain + linear-evaluate vanilla MSN, MSN + EHR variants and the DINO / MAE / supervised "
    "baselines; a table with CIs (paper Tables 3/4)"
)
SMOKE_PRETRAIN = (
    "data.max_images=64",
    "train.epochs=1",
    "train.batch_size=16",
    "ehr.imputer_trees=10",
    "ehr.imputer_max_iter=3",
    "train.log_every=1",
    "monitor.max_images=64",  # as the smoke config: the probe at 224 px costs seconds per image on a CPU
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the experiment folder (new or to continue)")
    parser.add_argument(
        "--backbone",
        default="vit_t",
        help="vit_t (the paper's 6-head ViT-Tiny), vit_s, or small (the small-<variant> recipes: "
        "ViT-Tiny at 64 px for ../shared/data)",
    )
    parser.add_argument(
        "--variants",
        default="vanilla,D",
        help="comma-separated EHR variants; the first is the baseline (vanilla, age, sex, view, position, "
        "icu, mortality, D, SM, SI, all)",
    )
    parser.add_argument(
        "--baselines",
        default="",
        help="comma-separated baselines after the variants (paper Table 3): dino, mae (pretrained, then "
        "probed), supervised (random init fine-tuned on 100 %% of the labels), supervised-imagenet "
        "(--imagenet-encoder fine-tuned the same way)",
    )
    parser.add_argument(
        "--imagenet-encoder",
        type=Path,
        help="an ImageNet encoder of the backbone's architecture imported with `cxr-msn import-weights "
        "--format timm --kind encoder` (for the supervised-imagenet baseline)",
    )
    parser.add_argument(
        "--encoder-weights",
        choices=("last", "best_loss"),
        default="last",
        help="the pretrained encoder linear evaluation reads: the last epoch's (default) or the one of "
        "the lowest training loss (what the paper's early stopping kept)",
    )
    parser.add_argument(
        "--finetune-runs",
        choices=("grid", "single"),
        help="fine-tuning runs of the supervised baselines and control: grid (the paper's five runs, the "
        "baselines' default) or single (one cosine run, the control's default; a CPU budget)",
    )
    parser.add_argument("--seed", type=int, default=0, help="train.seed of every pretraining and linear run")
    parser.add_argument(
        "--seeds",
        default="",
        help="comma-separated seeds (e.g. 0,1,2): the whole experiment once per seed (replaces --seed)",
    )
    parser.add_argument(
        "--controls",
        default="",
        help="comma-separated controls per seed: random (random-init encoder), supervised "
        "(fine-tuned from random init on 100 %% of the labels), pixels (32 x 32 pixel baseline)",
    )
    parser.add_argument(
        "--finetune-set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the supervised control's and baselines' fine-tuning, e.g. max_epochs=20 lr=3e-4",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--manifest", type=Path, help="a manifest CSV to pretrain and evaluate on")
    source.add_argument(
        "--shared-root",
        type=Path,
        help="the shared data folder (nih1000/, covid/), used when no --manifest is given (default: "
        "$CXR_MSN_DATA_ROOT, else ../shared/data beside a source checkout)",
    )
    parser.add_argument(
        "--preset",
        choices=("none", "smoke"),
        default="none",
        help="smoke: 1 pretraining epoch on 64 images and the smoke linear protocol (minutes on a CPU)",
    )
    parser.add_argument(
        "--pretrain-set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="pretraining overrides for every variant, e.g. train.epochs=2 data.num_workers=1",
    )
    parser.add_argument(
        "--linear-set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="linear-evaluation overrides (see `linear-eval --print-config`), e.g. augment.copies=2",
    )


def run(args: argparse.Namespace) -> int:
    try:
        experiment = build_experiment(args)
        if args.controls or args.seeds.strip():
            from training.downstream import controls

            setup = build_controls(args, experiment)
            print(controls.results_markdown(controls.run_controls(setup, args.out)))
            return 0
        from training.downstream.experiment import results_markdown, run_experiment

        results = run_experiment(experiment, args.out)
    except ValueError as exc:
        print(f"cxr-msn experiment: error: {exc}", file=sys.stderr)
        return 2
    print(results_markdown(results))
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_controls(args: argparse.Namespace, experiment: Experiment) -> ControlExperiment:
    from training.config import apply_overrides
    from training.downstream.config import DownstreamConfig
    from training.downstream.controls import ControlExperiment

    seeds = tuple(int(seed) for seed in _names(args.seeds)) or (experiment.seed,)
    default = ControlExperiment(experiment=experiment)
    holder = DownstreamConfig(finetune=default.finetune)
    finetune = apply_overrides(holder, [f"finetune.{item}" for item in args.finetune_set]).finetune
    return ControlExperiment(
        experiment=experiment,
        seeds=seeds,
        controls=_names(args.controls),
        finetune=finetune,
        finetune_runs=args.finetune_runs or "single",
    )


def build_experiment(args: argparse.Namespace) -> Experiment:
    from training.config import apply_overrides
    from training.data_root import shared_data_root
    from training.downstream.config import named_config
    from training.downstream.experiment import Experiment

    if args.manifest is not None:
        data = ("data.source=manifest", f"data.manifest={args.manifest}")
    else:
        root = shared_data_root(args.shared_root, check=True, flag="--shared-root")
        data = ("data.source=shared", f"data.shared_root={root}")
    smoke = args.preset == "smoke"
    downstream = apply_overrides(named_config("smoke" if smoke else "paper"), list(args.linear_set))
    baselines = _names(args.baselines)
    if any(b.startswith("supervised") for b in baselines):  # --finetune-set: their fine-tuning too
        downstream = apply_overrides(downstream, [f"finetune.{item}" for item in args.finetune_set])
    return Experiment(
        backbone=args.backbone,
        variants=_names(args.variants),
        seed=args.seed,
        data=data,
        pretrain_overrides=(*(SMOKE_PRETRAIN if smoke else ()), *args.pretrain_set),
        downstream=downstream,
        baselines=baselines,
        pretrain_weights=args.encoder_weights,
        finetune_runs=args.finetune_runs or "grid",
        imagenet_encoder=str(args.imagenet_encoder) if args.imagenet_encoder else "",
    )
