"""A second read-out of a control experiment: the learning monitor's logistic probe on the test split.

    python -m recipes.probe_controls runs/controls --out docs/results/controls-small/logistic_probe

For every seed folder of a ``cxr-msn experiment --controls`` run, each encoder (the MSN
variants' EMA target encoders and the random-init control) embeds the seed's training and test
images (the centre view, 8-bit cached as in pretraining); one L2 logistic regression per label
(C = 0.1, embeddings standardised with the training mean and std: the monitor's probe) is fitted
on train and scored on test, with the same label policy, bootstrap CIs and paired comparison
against the random-init encoder as the experiment's own table. A diagnostic added after the
experiment was run, not the paper's protocol: it asks whether the embeddings carry the labels
when the head is fitted well, where the paper's Adam heads on raw embeddings, selected on a
small validation split, may not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.fileio import atomic_write_text
from cxrmsn.labels import LABELS

C = 0.1


def probe_seed(seed_dir: Path, variants: list[str], backbone: str) -> dict[str, Any]:
    import torch
    from sklearn.linear_model import LogisticRegression

    from training.data.cache import load_or_build_cache
    from training.data.manifest import read_manifest, resolve_image_path
    from training.downstream.embeddings import load_encoder
    from training.downstream.labels import annotated_labels, estimable, label_matrix
    from training.downstream.metrics import evaluate, paired_comparison
    from training.monitor import embed

    encoders = {f"msn-{v}": seed_dir / f"{backbone}-{v}" / "pretrain" for v in variants}
    encoders["random"] = seed_dir / "controls" / "random" / "encoder.safetensors"
    manifest = next(iter(encoders.values())) / "manifest.csv"
    rows = read_manifest(manifest)
    annotated = annotated_labels(rows)
    splits = {name: [row for row in rows if row.split == name] for name in ("train", "test")}
    labels = {name: label_matrix(split, annotated=annotated) for name, split in splits.items()}
    trained = [label for label, ok in zip(LABELS, estimable(labels["train"]), strict=True) if ok]
    results: dict[str, Any] = {}
    probabilities: dict[str, np.ndarray] = {}
    for arm, path in encoders.items():
        encoder = load_encoder(path)
        size = encoder.preprocessing.crop
        cache = Path("~/.cache/cxr-msn/images").expanduser()
        images = {
            name: np.asarray(
                load_or_build_cache([resolve_image_path(manifest, r) for r in split], size, cache).images
            )
            for name, split in splits.items()
        }
        x = {
            name: embed(encoder.model.encoder, batch, torch.device("cpu")).numpy()
            for name, batch in images.items()
        }
        mean, std = x["train"].mean(axis=0), x["train"].std(axis=0) + 1e-6
        scores = np.full((len(x["test"]), len(LABELS)), 0.5)
        for label in trained:
            j = LABELS.index(label)
            mask = labels["train"].mask[:, j]
            model = LogisticRegression(C=C, max_iter=2000)
            model.fit((x["train"][mask] - mean) / std, labels["train"].targets[mask, j])
            scores[:, j] = model.predict_proba((x["test"] - mean) / std)[:, 1]
        probabilities[arm] = scores
        results[arm] = {"test": evaluate(scores, labels["test"], split="test", trained=trained)["macro"]}
    macro = results["random"]["test"]["labels"]
    for arm in results:
        if arm != "random":
            comparison = paired_comparison(probabilities[arm], probabilities["random"], labels["test"], macro)
            results[arm]["vs_random"] = comparison["difference"]
    return results


def _ci(entry: dict[str, Any]) -> str:
    low, high = entry["ci"]
    return f"{entry['value']:.3f} [{low:.3f}, {high:.3f}]"


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "Logistic probe (the learning monitor's: standardised CLS embeddings, L2 logistic regression, "
        f"C = {C}) fitted on train, test macro AUROC with 95 % bootstrap CIs; Δ vs the random-init "
        "encoder on the same test images (paired bootstrap, two-sided p). A diagnostic added after the "
        "experiment, not the paper's protocol.",
        "",
        "| Encoder | Seed | Test AUROC (95 % CI) | Δ vs random (95 % CI) | p |",
        "|---|---:|---|---|---:|",
    ]
    for seed, arms in results.items():
        for arm, entry in arms.items():
            diff = entry.get("vs_random")
            delta = _ci(diff) if diff else "(reference)"
            p = (
                f"{diff['p_value_two_sided']:.3f}"
                if diff and diff.get("p_value_two_sided") is not None
                else "-"
            )
            lines.append(f"| {arm} | {seed} | {_ci(entry['test']['auroc'])} | {delta} | {p} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.probe_controls", description=__doc__.split("\n")[0]
    )
    parser.add_argument("experiment", type=Path, help="a `cxr-msn experiment --controls` folder")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    setup = json.loads((args.experiment / "config.json").read_text())
    variants, backbone = setup["experiment"]["variants"], setup["experiment"]["backbone"]
    results = {
        str(seed): probe_seed(args.experiment / f"seed{seed}", variants, backbone) for seed in setup["seeds"]
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
