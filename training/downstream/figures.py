"""The report's figures (matplotlib, Agg backend): ROC and precision-recall curves per label,
a 2-D map of test embeddings coloured by label, attention overlays, training curves.

matplotlib is imported inside each function (it is needed for reports only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.labels import LABELS
from training.downstream.estimates import format_estimate
from training.downstream.labels import LabelMatrix


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "reports need matplotlib: pip install matplotlib (part of the train extra)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(count: int, columns: int = 4, size: float = 3.0) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.axis("off")
    return figure, flat[:count]


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
    return path


def _curve(scores: np.ndarray, positive: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    if kind == "roc":
        fpr, tpr, _ = roc_curve(positive, scores)
        return fpr, tpr
    precision, recall, _ = precision_recall_curve(positive, scores)
    return recall, precision


def curves_figure(
    path: Path, probabilities: np.ndarray, labels: LabelMatrix, per_label: dict[str, Any], kind: str
) -> Path:
    """One panel per label: the test ROC (``kind="roc"``) or precision-recall curve."""
    figure, axes = _grid(len(LABELS))
    metric = "auroc" if kind == "roc" else "auprc"
    for j, (ax, label) in enumerate(zip(axes, LABELS, strict=True)):
        entry = per_label[label]
        ax.set_title(label, fontsize=9)
        if entry["status"] != "estimable":
            ax.text(
                0.5,
                0.5,
                "not estimable:\n" + entry["reason"].replace(" (", "\n("),
                ha="center",
                va="center",
                fontsize=7,
                wrap=True,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        keep = labels.mask[:, j]
        positive = labels.targets[keep, j] == 1
        x, y = _curve(probabilities[keep, j], positive, kind)
        ax.plot(x, y, color="C0", drawstyle="steps-post" if kind == "pr" else "default")
        baseline = [0, 1] if kind == "roc" else [positive.mean()] * 2
        ax.plot([0, 1], baseline, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("1 - specificity" if kind == "roc" else "recall", fontsize=7)
        ax.set_ylabel("sensitivity" if kind == "roc" else "precision", fontsize=7)
        ax.tick_params(labelsize=6)
        top = kind == "pr"  # precision-recall curves run low for rare labels: annotate above them
        estimate = format_estimate(entry[metric], digits=2, style="brackets", missing="n/a")
        ax.text(
            0.98,
            0.96 if top else 0.04,
            f"{metric.upper()} {estimate}\n{entry['positives']} pos / {entry['negatives']} neg",
            ha="right",
            va="top" if top else "bottom",
            fontsize=7,
            transform=ax.transAxes,
        )
    return _save(figure, path)


def embedding_map(embeddings: np.ndarray, *, seed: int, tsne_max: int) -> tuple[np.ndarray, str]:
    """2-D coordinates: t-SNE up to ``tsne_max`` images, else PCA (t-SNE is too slow there)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if len(embeddings) < 4:
        raise ValueError(f"a 2-D map needs at least 4 images, got {len(embeddings)}")
    standardised = (embeddings - embeddings.mean(0)) / (embeddings.std(0) + 1e-6)
    if len(embeddings) <= tsne_max:
        perplexity = float(min(30.0, (len(embeddings) - 1) / 3))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(standardised), f"t-SNE (perplexity {perplexity:g})"
    return PCA(n_components=2, random_state=seed).fit_transform(standardised), "PCA (first two components)"


def embedding_figure(
    path: Path, coordinates: np.ndarray, method: str, labels: LabelMatrix, shown: list[str]
) -> Path:
    """One panel per label: test images at their 2-D positions, positive / negative / not counted."""
    figure, axes = _grid(max(1, len(shown)))
    for ax, label in zip(axes, shown, strict=False):
        j = LABELS.index(label)
        counted, positive = labels.mask[:, j], labels.targets[:, j] == 1
        groups = (
            (~counted, "lightgrey", "not annotated"),
            (counted & ~positive, "C0", "negative"),
            (counted & positive, "C3", "positive"),
        )
        for select, colour, name in groups:
            if select.any():
                ax.scatter(*coordinates[select].T, s=8, color=colour, label=f"{name} ({int(select.sum())})")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, loc="best")
    figure.suptitle(f"Test CLS embeddings, {method}", fontsize=10)
    return _save(figure, path)


def attention_figure(path: Path, examples: list[dict[str, Any]]) -> Path:
    """Each example: the model's view of the image and its last-layer CLS attention over it."""
    plt = _pyplot()
    figure, axes = plt.subplots(2, len(examples), figsize=(2.6 * len(examples), 5.6), squeeze=False)
    for column, example in enumerate(examples):
        image, attention = example["image"], example["attention"]
        top, bottom = axes[0][column], axes[1][column]
        top.imshow(image, cmap="gray", vmin=0, vmax=1)
        top.set_title(example["title"], fontsize=7)
        bottom.imshow(image, cmap="gray", vmin=0, vmax=1)
        bottom.imshow(attention, cmap="jet", alpha=0.45, extent=(0, image.shape[1], image.shape[0], 0))
        bottom.set_title("last-layer CLS attention", fontsize=7)
        for ax in (top, bottom):
            ax.axis("off")
    return _save(figure, path)


def history_figure(path: Path, runs: list[dict[str, Any]]) -> Path:
    """Validation macro AUROC per epoch of every run."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        epochs = [h["epoch"] for h in run["history"]]
        ax.plot(epochs, [h["valid_macro_auroc"] for h in run["history"]], marker=".", label=run["name"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation macro AUROC")
    ax.legend(fontsize=7)
    return _save(figure, path)


MONITOR_PANELS = (
    ("probe_auroc", "probe macro AUROC (valid)"),
    ("embedding_std", "embedding spread (1: spread, 0: collapsed)"),
    ("prototypes_used", "prototypes in use (valid)"),
    ("target_max", "mean max target probability"),
    ("agreement", "anchor/target argmax agreement"),
    ("mean_entropy_ratio", "H(mean prediction) / log K"),
)


def monitor_figure(path: Path, monitor: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> Path:
    """The pretraining learning monitor: the training loss and one panel per monitored signal."""
    figure, axes = _grid(1 + len(MONITOR_PANELS), columns=4, size=2.8)
    axes[0].plot([row["epoch"] for row in epochs], [row["loss"] for row in epochs], marker=".")
    axes[0].set_title("training loss (MSN)", fontsize=8)
    for ax, (key, title) in zip(axes[1:], MONITOR_PANELS, strict=True):
        points = [(row["epoch"], row[key]) for row in monitor if isinstance(row.get(key), int | float)]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".")
        if key == "probe_auroc" and monitor and monitor[0]["epoch"] == 0:
            ax.axhline(monitor[0][key], linestyle="--", color="grey", label="at initialisation")
            ax.legend(fontsize=6)
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(labelsize=7)
    return _save(figure, path)


def reliability_figure(
    path: Path,
    before: np.ndarray,
    after: np.ndarray,
    labels: LabelMatrix,
    shown: list[str],
    ece: dict[str, Any],
    bins: int = 15,
) -> Path:
    """One panel per label: the test reliability diagram before (uncalibrated) and after
    temperature scaling, with each one's ECE; dashed: perfect calibration."""
    from training.downstream.calibration import reliability

    figure, axes = _grid(len(shown))
    for ax, label in zip(axes, shown, strict=True):
        j = LABELS.index(label)
        keep = labels.mask[:, j]
        positive = labels.targets[keep, j] == 1
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        for probabilities, name, colour in ((before, "before", "C1"), (after, "after", "C0")):
            table = reliability(probabilities[keep, j], positive, bins)
            points = [
                (m, f)
                for m, f in zip(table["mean_probability"], table["fraction_positive"], strict=True)
                if m is not None and f is not None
            ]
            value = (ece.get(name) or {}).get("per_label", {}).get(label)
            text = f"{name} (ECE {value:.3f})" if value is not None else name
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, color=colour, label=text)
        ax.set_title(label, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("mean predicted probability", fontsize=7)
        ax.set_ylabel("fraction positive", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, loc="upper left")
    return _save(figure, path)
