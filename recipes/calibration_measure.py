"""Which probability calibration, by measurement (issue 20 item 3): none, temperature, Platt, isotonic.

Each method is fitted per label on a run's validation predictions (its stored uncalibrated
logits) and scored on its test predictions: macro expected calibration error (15 bins, the
labels estimable on both splits) with a 95 % bootstrap interval over test images, and macro
negative log-likelihood, and the paired bootstrap interval of each method's ECE change
against no calibration. Runs: the bundled model, the logistic-head controls (the bundled
model's head) and the paper's Adam-head controls that exist under ``runs/``. The bootstrap
ECE is biased upward (resampled images fill bins unevenly), so only the paired change is
read from it.

    python -m recipes.calibration_measure [--runs DIR ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.downstream.calibration import (
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    sigmoid,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [
    "runs/bundled/linear",
    *(
        f"runs/{head}/seed{s}/{v}/linear"
        for head in ("controls-logistic", "controls")
        for s in (0, 1, 2)
        for v in ("small-D", "small-vanilla")
    ),
]
METHODS = ("none", "temperature", "platt", "isotonic")
RESAMPLES = 1000
_EPS = 1e-6

Calibrator = Callable[[np.ndarray], np.ndarray]  # test logits -> probabilities


def fit(method: str, logits: np.ndarray, positive: np.ndarray) -> Calibrator:
    if method == "none":
        return sigmoid
    if method == "temperature":
        t = fit_temperature(logits, positive)
        return lambda z: sigmoid(z / t)
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1e6).fit(logits[:, None], positive)
        return lambda z: model.predict_proba(z[:, None])[:, 1]
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=_EPS, y_max=1 - _EPS, out_of_bounds="clip").fit(logits, positive)
    return lambda z: iso.predict(z)


def label_columns(valid: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> list[int]:
    def estimable(split: dict[str, np.ndarray]) -> np.ndarray:
        pos = ((split["targets"] == 1) & split["mask"]).sum(0)
        neg = ((split["targets"] == 0) & split["mask"]).sum(0)
        return (pos > 0) & (neg > 0)

    return [int(j) for j in np.flatnonzero(estimable(valid) & estimable(test))]


def macro(
    probabilities: list[np.ndarray], positives: list[np.ndarray], rows: list[np.ndarray]
) -> tuple[float, float]:
    eces, nlls = [], []
    for p, y, r in zip(probabilities, positives, rows, strict=True):
        p, y = p[r], y[r]
        if p.size == 0:
            continue
        eces.append(expected_calibration_error(p, y) or 0.0)
        q = np.clip(p, _EPS, 1 - _EPS)
        nlls.append(float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))))
    return float(np.mean(eces)), float(np.mean(nlls))


def measure_run(run: Path, rng: np.random.Generator) -> dict[str, object]:
    valid = dict(np.load(run / "predictions" / "valid.npz"))
    test = dict(np.load(run / "predictions" / "test.npz"))
    for split in (valid, test):  # runs made before calibration kept only (uncalibrated) probabilities
        if "logits" not in split:
            split["logits"] = logits_from_probabilities(split["probabilities"])
    columns = label_columns(valid, test)
    n_test = len(test["targets"])
    boots = [rng.integers(0, n_test, n_test) for _ in range(RESAMPLES)]
    result: dict[str, object] = {"run": str(run), "labels": len(columns), "test_images": n_test}
    uncalibrated: list[float] = []
    for method in METHODS:
        probabilities, positives, kept = [], [], []
        for j in columns:
            v, t = valid["mask"][:, j], test["mask"][:, j]
            calibrate = fit(method, valid["logits"][v, j].astype(np.float64), valid["targets"][v, j] == 1)
            p = np.full(n_test, np.nan)
            p[t] = calibrate(test["logits"][t, j].astype(np.float64))
            probabilities.append(p)
            positives.append((test["targets"][:, j] == 1).astype(np.float64))
            kept.append(t)
        ece, nll = macro(probabilities, positives, [np.flatnonzero(k) for k in kept])
        boot = np.asarray([macro(probabilities, positives, [b[k[b]] for k in kept])[0] for b in boots])
        uncalibrated = uncalibrated or list(boot)
        low, high = np.percentile(boot - np.asarray(uncalibrated), [2.5, 97.5])
        result[method] = {"ece": ece, "nll": nll, "delta_vs_none_ci": [float(low), float(high)]}
    return result


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| run | labels | " + " | ".join(f"{m}: ECE, NLL, ΔECE vs none [95% CI]" for m in METHODS) + " |",
        "|---|---:|" + "---|" * len(METHODS),
    ]
    for r in results:
        cells = []
        for m in METHODS:
            s = r[m]
            assert isinstance(s, dict)
            low, high = s["delta_vs_none_ci"]
            delta = s["ece"] - r["none"]["ece"]  # type: ignore[index]
            cells.append(f"{s['ece']:.3f}, {s['nll']:.3f}, {delta:+.3f} [{low:+.3f}, {high:+.3f}]")
        name = str(r["run"]).removeprefix(str(ROOT) + "/runs/").removesuffix("/linear")
        lines.append(f"| {name} | {r['labels']} | " + " | ".join(cells) + " |")
    means = {m: np.mean([r[m]["ece"] for r in results]) for m in METHODS}  # type: ignore[index]
    lines.append("| mean over runs | | " + " | ".join(f"{means[m]:.3f}" for m in METHODS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="*", default=DEFAULT_RUNS, help="linear-evaluation run folders")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    runs = [ROOT / r for r in args.runs if (ROOT / r / "predictions" / "test.npz").is_file()]
    if not runs:
        parser.error("none of the run folders has predictions/{valid,test}.npz")
    results = [measure_run(run, rng) for run in runs]
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
