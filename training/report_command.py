"""Write a report folder for one downstream run: a markdown summary, one HTML page and PNG figures.

Examples:
  cxr-msn report runs/smoke-linear --out runs/smoke-linear/report
  cxr-msn report runs/ft/fraction_0.1 --out reports/ft-10 --tsne-max 2000

RUN_DIR is an --out folder of linear-eval, finetune (fraction_<f>/) or evaluate. Writes
report.md (per-label test AUROC/AUPRC with 95 % CIs, counts and reasons, macro values and
their labels, thresholds, runs) and roc_curves.png, pr_curves.png, embeddings.png (t-SNE of
the test CLS embeddings coloured by label, PCA above --tsne-max images), attention.png (last-
layer CLS attention over single-label positive test images) and training_curves.png.
report.html holds the same content with the figures embedded: one self-contained page that
opens offline in any browser and can be sent as one file. Needs matplotlib.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "markdown + one-page HTML report with figures (ROC/PR curves, t-SNE, attention overlays) for a run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="an --out folder of linear-eval, finetune or evaluate")
    parser.add_argument("--out", type=Path, required=True, help="the report folder to write")
    parser.add_argument(
        "--tsne-max", type=int, default=3000, help="largest test set mapped by t-SNE; above it PCA is used"
    )
    parser.add_argument(
        "--attention-images", type=int, default=6, help="test images shown with attention overlays (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of t-SNE / PCA")


def run(args: argparse.Namespace) -> int:
    from training.downstream.cli import fail
    from training.downstream.report import write_report

    if args.tsne_max < 0 or args.attention_images < 0:
        return fail(
            "report",
            ValueError(
                f"--tsne-max and --attention-images must be >= 0, got "
                f"{args.tsne_max}, {args.attention_images}"
            ),
        )
    try:
        files = write_report(
            args.run_dir,
            args.out,
            tsne_max=args.tsne_max,
            attention_count=args.attention_images,
            seed=args.seed,
        )
    except ValueError as exc:
        return fail("report", exc)
    print(files.markdown)
    print(f"open {files.html} in a browser (one self-contained page, figures included)")
    return 0
