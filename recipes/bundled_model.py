"""Train, evaluate, export and document the model that `make serve` ships.

    make bundled-model            # = python -m recipes.bundled_model
    python -m recipes.bundled_model --work runs/bundled --repository model_repository

Steps, each a command of this project (the recipe is recipes/bundled_model.json):
pretrain (MSN + EHR), linear-eval (the paper's protocol), the pixel baseline, export
(ONNX fp32 + int8, measured on the validation split, with the out-of-distribution guard
fitted on the training split: docs/ood.md), regression values for two fixed
inputs, and MODEL_CARD.md. A step recorded as finished in WORK/pipeline.json is reused, so
a killed run continues where it stopped (pretraining itself resumes from its last epoch).
Seeded; the run time of every step is written to WORK/pipeline.json.

``--reuse-pretrain RUN`` takes a finished pretraining run folder instead of pretraining again,
after checking that its config.json is exactly the config this recipe would run (for example
the seed-0 run of the control experiment in docs/training.md, which is the same seeded run).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrmsn.fileio import atomic_write_text
from training.data_root import shared_data_root

ROOT = Path(__file__).resolve().parents[1]
RECIPE = Path(__file__).with_name("bundled_model.json")
SHARED_DATA = shared_data_root()  # $CXR_MSN_DATA_ROOT, else ../shared/data beside the checkout
REGRESSION_FILE = "regression.json"


def cxr_msn(*args: str) -> None:
    command = [str(Path(sys.executable).with_name("cxr-msn")), *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


class Pipeline:
    def __init__(
        self, work: Path, repository: Path, recipe: dict[str, Any], reuse_pretrain: Path | None = None
    ) -> None:
        self.work, self.repository, self.recipe = work, repository, recipe
        self.reuse_pretrain = reuse_pretrain
        self.log_path = work / "pipeline.json"
        self.log: dict[str, Any] = json.loads(self.log_path.read_text()) if self.log_path.is_file() else {}

    def step(self, name: str, action: Any) -> None:
        """Run ``action`` unless an earlier run finished it with the same recipe section.

        A step whose recipe section changed runs again, and so does every step after it.
        """
        settings = self.recipe.get(name)
        earlier = self.log.get(name)
        if earlier is not None and earlier.get("settings") == settings:
            print(f"= {name}: done in an earlier run ({earlier['seconds']} s), reused", flush=True)
            return
        if earlier is not None:
            print(f"~ {name}: the recipe changed since the earlier run; running it and the later steps again")
            names = list(self.log)
            for later in names[names.index(name) :]:
                del self.log[later]
        started = time.monotonic()
        action()
        self.log[name] = {
            "seconds": round(time.monotonic() - started, 1),
            "finished": time.strftime("%F %T"),
            "settings": settings,
        }
        atomic_write_text(self.log_path, json.dumps(self.log, indent=2) + "\n")

    def run(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        pretrain, linear = self.work / "pretrain", self.work / "linear"
        self.step("pretrain", self.pretrain)
        self.step("linear_eval", lambda: self.linear_eval(pretrain, linear))
        self.step("baseline", self.baseline)
        self.step("export", self.export)
        self.step("regression", self.regression)
        from recipes.model_card import write_model_card

        write_model_card(self.work, self.repository, self.recipe, ROOT / "MODEL_CARD.md")
        total = sum(entry["seconds"] for entry in self.log.values())
        print(f"bundled model written to {self.repository}; steps took {total / 60:.1f} min in total")

    def linear_eval(self, pretrain: Path, out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)  # a finished or killed run with other settings
        cxr_msn("linear-eval", str(pretrain), "--out", str(out), "--set", *self.recipe["linear_eval"]["set"])

    def pretrain_args(self) -> list[str]:
        settings = self.recipe["pretrain"]
        overrides = [value.format(shared=SHARED_DATA) for value in settings["set"]]
        return ["--config", settings["config"], "--set", *overrides]

    def pretrain(self) -> None:
        out = self.work / "pretrain"
        if self.reuse_pretrain is not None and not (out / "config.json").is_file():
            copy_finished_run(self.reuse_pretrain, out, self.pretrain_args())
            return
        if (out / "config.json").is_file():  # a killed run: continue it with its own config
            cxr_msn("pretrain", "--out", str(out), "--resume")
        else:
            cxr_msn("pretrain", *self.pretrain_args(), "--out", str(out))

    def baseline(self) -> None:
        from recipes.baseline import fit_and_score

        result = fit_and_score(self.manifest(), components=self.recipe["baseline"]["components"])
        atomic_write_text(self.work / "baseline.json", json.dumps(result, indent=2) + "\n")

    def export(self) -> None:
        valid = self.validation_csv()
        classifier = self.work / "linear" / "classifier.safetensors"
        variants = self.recipe["export"]["variants"]
        guard = ["--ood-fit-manifest", str(self.manifest())] if self.recipe["export"].get("ood_guard") else []
        cxr_msn("export", str(classifier), "--out", str(self.repository), "--variants", variants,
                "--validation-manifest", str(valid), *guard, "--overwrite")  # fmt: skip

    def regression(self) -> None:
        write_regression_values(self.repository)

    def manifest(self) -> Path:
        return self.work / "pretrain" / "manifest.csv"

    def validation_csv(self) -> Path:
        """The validation split of the run's manifest, with absolute image paths."""
        from training.data.manifest import read_manifest, resolve_image_path

        out = self.work / "valid.csv"
        rows = [row for row in read_manifest(self.manifest()) if row.split == "valid"]
        with out.open("w", newline="") as handle:
            writer = csv.writer(handle)
            from cxrmsn.labels import LABELS

            writer.writerow(["path", *LABELS])
            for row in rows:
                values = ["" if v is None else str(int(v)) for v in row.labels]
                writer.writerow([str(resolve_image_path(self.manifest(), row)), *values])
        return out


def copy_finished_run(source: Path, out: Path, pretrain_args: list[str]) -> None:
    """Copy a finished pretraining run whose config is exactly what ``pretrain_args`` resolve to."""
    command = [str(Path(sys.executable).with_name("cxr-msn")), "pretrain", *pretrain_args, "--print-config"]
    expected = json.loads(
        subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    )
    actual = json.loads((source / "config.json").read_text())
    if actual != expected:
        differing = sorted(
            f"{section}.{key}"
            for section in expected
            if isinstance(expected[section], dict)
            for key in expected[section]
            if expected[section][key] != actual.get(section, {}).get(key)
        )
        raise SystemExit(f"--reuse-pretrain {source}: its config differs from the recipe's: {differing}")
    if not (source / "summary.json").is_file():
        raise SystemExit(f"--reuse-pretrain {source}: the run is not finished (no summary.json)")
    print(f"= pretrain: reusing {source} (same config as the recipe)", flush=True)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    partial.rename(out)  # a killed copy leaves no half run folder that would look resumable


def regression_inputs() -> dict[str, bytes]:
    """Two fixed inputs: a generated picture (PNG) and pydicom-data's chest CR (RG1)."""
    import io

    from PIL import Image
    from pydicom.data import get_testdata_file

    rows, cols = np.mgrid[0:256, 0:240].astype(np.float64)
    picture = 0.5 + 0.25 * np.sin(rows / 17.0) * np.cos(cols / 23.0) + 0.2 * (cols / 240.0)
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(picture, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        raise RuntimeError("pydicom-data is not installed (the dev extra has it)")
    return {"generated.png": buffer.getvalue(), "pydicom-data RG1_UNCR.dcm": Path(path).read_bytes()}


def predict_regression_inputs(repository: Path, variant: str) -> dict[str, dict[str, float]]:
    """The served probabilities of the fixed inputs: decoded, preprocessed and run as serving does."""
    from serving.predictor import load_predictor

    # No start-up self-check: this is what the regression values are compared with (or made from).
    predictor = load_predictor(repository, variant=variant, self_check=False)
    results = {}
    for name, data in regression_inputs().items():
        prepared = predictor.prepare(data)
        probabilities, _ = predictor.infer(prepared.model_input[None])
        results[name] = {
            label: float(p) for label, p in zip(predictor.manifest.labels, probabilities[0], strict=True)
        }
    return results


def write_regression_values(repository: Path) -> None:
    """Store the fixed inputs, as the model sees them, and fp32's probabilities for them.

    ``regression_inputs.npy`` (the preprocessed inputs) and ``regression.json`` (fp32's
    probabilities, each variant's tolerance from the manifest's ``fp32_agreement``), both
    listed in the manifest: serving's start-up self-check runs them through the variant it
    loads, and tests/bundled runs the original files through the whole served path. Only
    fp32 is pinned; int8 is compared with fp32 within the tolerance export measured.
    """
    from export.regression import write_regression_record
    from serving.predictor import load_predictor

    predictor = load_predictor(repository, variant="fp32", self_check=False)
    inputs = {name: predictor.prepare(data).model_input for name, data in regression_inputs().items()}
    record = write_regression_record(
        repository,
        inputs,
        about="the fp32 model's probabilities for two fixed inputs (recipes/bundled_model.py "
        "regression_inputs; preprocessed in regression_inputs.npy): serving's self-check and "
        "tests/bundled compare every variant with them within the variant's tolerance",
    )
    for variant, tolerance in record.tolerances.items():
        print(
            f"regression: {variant} is {record.observed[variant]:.3g} from fp32 (tolerance {tolerance:.3g})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.bundled_model", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bundled", help="run folder")
    parser.add_argument(
        "--repository", type=Path, default=ROOT / "model_repository", help="where the model goes"
    )
    parser.add_argument("--fresh", action="store_true", help="delete --work first and run every step")
    parser.add_argument(
        "--reuse-pretrain",
        type=Path,
        help="a finished pretraining run folder with exactly the recipe's config (not pretrained again)",
    )
    args = parser.parse_args(argv)
    if not SHARED_DATA.is_dir():
        print(f"{SHARED_DATA} is absent: the bundled model is trained on its public images", file=sys.stderr)
        return 2
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    Pipeline(args.work, args.repository, json.loads(RECIPE.read_text()), args.reuse_pretrain).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
