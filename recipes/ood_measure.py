"""Measure out-of-distribution scores on the bundled model (issue 20 items 1-2).

Two measurements. ``--candidates`` (how the score was chosen, before the guard existed) and,
by default, the guard as served (``evaluate_shipped``), end to end.

Candidates: it chose the score by measurement before the serving path had one.
Every input goes through serving's own decode and preprocess
(``serving.predictor.prepare_image``); then three candidate scores:

- ``embedding``: Mahalanobis distance of the frozen encoder's CLS embedding to a Gaussian of
  the training images' embeddings (Ledoit-Wolf shrinkage covariance); needs an embedding
  output from the graph.
- ``knn``: mean cosine distance to the 5 nearest training embeddings.
- ``outputs``: Mahalanobis distance of what the exported graph already returns (the trained
  labels' logits and the log of the 8 x 8 attention map); no graph change.

Operating threshold: the 99th percentile of the validation split's scores. Reported per
out-of-distribution set: AUROC of the score against the in-distribution test split and the
share flagged at the threshold; and the false-rejection rate on the test split.

The shipped guard: every input goes through ``serving.predictor`` as the service runs it
(decode, preprocess, the variant's graph with its ``ood_score`` output, ``Predictor.verdict``:
score over the manifest's threshold, DICOM Modality or ViewPosition). Per set: the AUROC of the
score against the in-distribution test split, the share flagged by the score alone and by the
whole rule; the false-rejection rate on the test split and on real chest DICOM films; and the
cost of the score per image: median ms of the graph with the guard against the same graph with
the guard's nodes cut off (batch 1, one thread, interleaved), in the same run.

    python -m recipes.ood_measure [--work runs/bundled] [--repository model_repository]
        [--candidates] [--out FILE] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 0


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_images(count: int, rng: np.random.Generator) -> Iterator[bytes]:
    for index in range(count):
        size = (int(rng.integers(96, 512)), int(rng.integers(96, 512)))
        if index % 2:
            yield _png(rng.integers(0, 256, size, dtype=np.uint8))
        else:
            yield _png(np.clip(rng.normal(128, 50, (*size, 3)), 0, 255).astype(np.uint8))


def gradient_images(count: int, rng: np.random.Generator) -> Iterator[bytes]:
    for index in range(count):
        h, w = int(rng.integers(128, 512)), int(rng.integers(128, 512))
        rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
        if index % 2:  # radial
            t = np.hypot(rows - h * rng.random(), cols - w * rng.random()) / np.hypot(h, w)
        else:
            angle = rng.random() * np.pi
            t = (np.cos(angle) * rows / h + np.sin(angle) * cols / w + 1) / 2.5
        start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        rgb = start[None, None] + (end - start)[None, None] * np.clip(t, 0, 1)[..., None]
        yield _png(rgb.astype(np.uint8))


def text_pages(count: int, rng: np.random.Generator) -> Iterator[bytes]:
    from PIL import Image, ImageDraw

    words = ["patient", "report", "chest", "findings", "normal", "lung", "heart", "effusion"]
    words += ["history", "clinical", "form", "date", "signed"]
    for _ in range(count):
        page = Image.new("L", (int(rng.integers(300, 600)), int(rng.integers(400, 800))), 255)
        draw = ImageDraw.Draw(page)
        for line in range(0, page.height - 20, int(rng.integers(14, 24))):
            text = " ".join(rng.choice(words, int(rng.integers(3, 10))))
            draw.text((20, 10 + line), text, fill=int(rng.integers(0, 80)))
        yield _png(np.asarray(page))


def dicom_files() -> Iterator[bytes]:
    from pydicom.data import get_testdata_file

    names = ["CT_small.dcm", "MR_small.dcm", "MR2_J2KR.dcm", "emri_small.dcm", "US1_J2KR.dcm"]
    names += ["SC_rgb.dcm", "OBXXXX1A.dcm", "JPEG2000.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]
    for name in names:
        path = get_testdata_file(name, download=False)
        if path is not None:
            yield Path(path).read_bytes()


def natural_photos(count: int, rng: np.random.Generator) -> Iterator[bytes]:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    for index in range(count):
        photo = photos[index % len(photos)]
        h, w = photo.shape[:2]
        size = int(rng.integers(min(h, w) // 3, min(h, w)))
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        yield _png(np.ascontiguousarray(photo[top : top + size, left : left + size]))


def altered_films(files: list[bytes], rng: np.random.Generator) -> dict[str, list[bytes]]:
    """In-distribution test films rotated by 90 degrees, and cropped to a quarter of each side."""
    from PIL import Image

    rotated, cropped = [], []
    for data in files:
        image = Image.open(io.BytesIO(data)).convert("L")
        rotated.append(_png(np.asarray(image.rotate(90, expand=True))))
        w, h = image.size
        left, top = int(rng.integers(0, w - w // 4)), int(rng.integers(0, h - h // 4))
        cropped.append(_png(np.asarray(image.crop((left, top, left + w // 4, top + h // 4)))))
    return {"chest films rotated 90 degrees": rotated, "chest films cropped to 1/4 side": cropped}


class Scorer:
    """Embeddings (torch, frozen encoder) and graph outputs (ONNX, serving's predictor) of inputs."""

    def __init__(self, work: Path, repository: Path) -> None:
        from cxrmsn.checkpoint import load_classifier
        from serving.predictor import load_predictor

        self.predictor = load_predictor(repository, variant="fp32", self_check=False)
        model, _ = load_classifier(work / "linear" / "classifier.safetensors")
        self.model = model
        trained = set(self.predictor.manifest.trained_labels)
        self.trained = [j for j, label in enumerate(self.predictor.manifest.labels) if label in trained]

    def features(self, files: list[bytes]) -> tuple[np.ndarray, np.ndarray, int]:
        """(embeddings [N, D], output features [N, F], files that did not decode)."""
        import torch

        from cxrmsn.errors import DecodeError

        inputs, failed = [], 0
        for data in files:
            try:
                inputs.append(self.predictor.prepare(data).model_input)
            except DecodeError:
                failed += 1
        batch = np.stack(inputs)
        with torch.no_grad():
            embeddings = self.model.embed(torch.from_numpy(batch)).numpy()  # type: ignore[operator]
        probabilities, attention = self.predictor.infer(batch)
        p = np.clip(np.asarray(probabilities, dtype=np.float64)[:, self.trained], 1e-7, 1 - 1e-7)
        logits = np.log(p) - np.log1p(-p)
        attention = np.log(np.asarray(attention, dtype=np.float64).reshape(len(batch), -1) + 1e-6)
        return embeddings.astype(np.float64), np.concatenate([logits, attention], axis=1), failed


class Mahalanobis:
    def __init__(self, train: np.ndarray) -> None:
        from sklearn.covariance import LedoitWolf

        self.mean = train.mean(axis=0)
        self.precision = LedoitWolf().fit(train - self.mean).precision_

    def __call__(self, x: np.ndarray) -> np.ndarray:
        centred = x - self.mean
        return np.sqrt(np.einsum("nd,de,ne->n", centred, self.precision, centred))


class NearestNeighbours:
    def __init__(self, train: np.ndarray, k: int = 5) -> None:
        self.train = train / np.linalg.norm(train, axis=1, keepdims=True)
        self.k = k

    def __call__(self, x: np.ndarray) -> np.ndarray:
        cosine = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ self.train.T
        return 1.0 - np.sort(cosine, axis=1)[:, -self.k :].mean(axis=1)


def split_files(work: Path) -> dict[str, list[bytes]]:
    from training.data.manifest import read_manifest, resolve_image_path

    manifest = work / "pretrain" / "manifest.csv"
    files: dict[str, list[bytes]] = {"train": [], "valid": [], "test": []}
    for row in read_manifest(manifest):
        files[row.split].append(resolve_image_path(manifest, row).read_bytes())
    return files


def pick(features: tuple[np.ndarray, np.ndarray, int], which: int) -> np.ndarray:
    """The embeddings (0) or the output features (1) of ``Scorer.features``."""
    return features[0] if which == 0 else features[1]


def measure(work: Path, repository: Path) -> dict[str, Any]:
    from training.downstream.metrics import auroc

    rng = np.random.default_rng(SEED)
    scorer = Scorer(work, repository)
    splits = split_files(work)
    features = {name: scorer.features(files) for name, files in splits.items()}
    ood_sets: dict[str, list[bytes]] = {
        "uniform and Gaussian noise": list(noise_images(30, rng)),
        "colour gradients": list(gradient_images(30, rng)),
        "rendered text pages": list(text_pages(30, rng)),
        "pydicom CT, MR, US and other test files": list(dicom_files()),
        "natural photos (scikit-learn samples, crops)": list(natural_photos(30, rng)),
        **altered_films(splits["test"][:60], rng),
    }
    ood = {name: scorer.features(files) for name, files in ood_sets.items()}
    scorers: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] = {
        "embedding Mahalanobis": (Mahalanobis(features["train"][0]), 0),
        "embedding 5-NN cosine": (NearestNeighbours(features["train"][0]), 0),
        "outputs Mahalanobis (logits + attention)": (Mahalanobis(features["train"][1]), 1),
    }
    results: dict[str, Any] = {}
    for name, (score, which) in scorers.items():
        valid, test = score(pick(features["valid"], which)), score(pick(features["test"], which))
        threshold = float(np.percentile(valid, 99))
        strict = float(valid.max())  # the alternative operating point: no validation image refused
        started = time.perf_counter()
        for _ in range(20):
            score(pick(features["test"], which)[:1])
        cost_ms = (time.perf_counter() - started) / 20 * 1e3
        rows = {}
        for set_name, (emb, out, failed) in ood.items():
            values = score((emb, out)[which])
            positive = np.r_[np.zeros(len(test), bool), np.ones(len(values), bool)]
            rows[set_name] = {
                "images": len(values),
                "undecodable": failed,
                "auroc": auroc(np.r_[test, values], positive),
                "flagged": float(np.mean(values > threshold)),
                "flagged_at_valid_max": float(np.mean(values > strict)),
            }
        results[name] = {
            "threshold_valid_p99": threshold,
            "false_rejection_test": float(np.mean(test > threshold)),
            "threshold_valid_max": strict,
            "false_rejection_test_at_valid_max": float(np.mean(test > strict)),
            "cost_ms_per_image": round(cost_ms, 3),
            "sets": rows,
        }
    return {
        "images": {split: len(f[0]) for split, f in features.items()},
        "scores": results,
        "seed": SEED,
    }


def table(report: dict[str, Any]) -> str:
    lines = []
    for name, block in report["scores"].items():
        lines.append(
            f"\n{name}: threshold {block['threshold_valid_p99']:.3f} (valid p99), false rejections on "
            f"test {block['false_rejection_test']:.1%} (at the valid maximum "
            f"{block['threshold_valid_max']:.3f}: {block['false_rejection_test_at_valid_max']:.1%}), "
            f"{block['cost_ms_per_image']} ms/image"
        )
        lines.append("| set | images | AUROC vs test | flagged (p99) | flagged (valid max) |")
        lines.append("|---|---:|---:|---:|---:|")
        for set_name, row in block["sets"].items():
            value = "n/a" if row["auroc"] is None else f"{row['auroc']:.3f}"
            lines.append(
                f"| {set_name} | {row['images']} | {value} | {row['flagged']:.0%} "
                f"| {row['flagged_at_valid_max']:.0%} |"
            )
    return "\n".join(lines)


def chest_dicom_films() -> dict[str, bytes]:
    """Real chest radiograph DICOMs that must pass: pydicom-data's RG1 (CR, PA) and the decodable
    films of ../shared/data/dicom (CR and DX; absent without the shared data)."""
    import csv as csv_module

    from pydicom.data import get_testdata_file

    films: dict[str, bytes] = {}
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        path = get_testdata_file(name, download=False)
        if path is not None:
            films[f"pydicom-data {name}"] = Path(path).read_bytes()
    folder = ROOT.parent / "shared" / "data" / "dicom"
    if (folder / "manifest.csv").is_file():
        with (folder / "manifest.csv").open(newline="") as handle:
            for row in csv_module.DictReader(handle):
                if row["expected_to_decode"] == "yes" and not row["file"].startswith("Fake_"):
                    films[f"shared {row['file'][:24]}"] = (folder / row["file"]).read_bytes()
    return films


def mislabelled_films() -> list[bytes]:
    """../shared/data/dicom's Fake_MONOHR1: a chest film tagged MONOCHROME1 by mistake, so it
    decodes inverted (white lungs). Refusing it is right: the model never saw inverted films."""
    path = ROOT.parent / "shared" / "data" / "dicom" / "Fake_MONOHR1.dcm"
    return [path.read_bytes()] if path.is_file() else []


def extremity_films() -> list[bytes]:
    """pydicom-data's RG3: a CR radiograph (AP) of an extremity, not a chest."""
    from pydicom.data import get_testdata_file

    paths = [get_testdata_file(name, download=False) for name in ("RG3_UNCR.dcm", "RG3_J2KR.dcm")]
    return [Path(path).read_bytes() for path in paths if path is not None]


def ood_sets(test_files: list[bytes]) -> dict[str, list[bytes]]:
    """The out-of-distribution sets, generated or shipped with packages (seeded)."""
    rng = np.random.default_rng(SEED)
    return {
        "uniform and Gaussian noise": list(noise_images(30, rng)),
        "colour gradients": list(gradient_images(30, rng)),
        "rendered text pages": list(text_pages(30, rng)),
        "pydicom CT, MR, US and other test files": list(dicom_files()),
        "pydicom CR extremity (RG3)": extremity_films(),
        "chest film mis-tagged MONOCHROME1 (inverted)": mislabelled_films(),
        "natural photos (scikit-learn samples, crops)": list(natural_photos(30, rng)),
        **altered_films(test_files[:60], rng),
    }


class ServedGuard:
    """One variant of the repository as serving loads it: scores and verdicts of raw files."""

    def __init__(self, repository: Path, variant: str) -> None:
        from serving.predictor import load_predictor

        self.predictor = load_predictor(repository, variant=variant, self_check=False, intra_op_threads=1)
        if self.predictor.guard is None:
            raise SystemExit(
                f"{repository} has no out-of-distribution guard (exported without --ood-fit-manifest)"
            )
        self.threshold = self.predictor.guard.threshold

    def judge(self, files: list[bytes]) -> dict[str, Any]:
        """Scores [N] of the decodable files, whether the score or the whole rule flags each, and
        how many did not decode (the decoder refuses those before the guard)."""
        from cxrmsn.errors import DecodeError

        scores, by_rule, failed = [], [], 0
        for data in files:
            try:
                prepared = self.predictor.prepare(data)
            except DecodeError:
                failed += 1
                continue
            _, _, score = self.predictor.infer_scored(prepared.model_input[None])
            value = float(score[0])  # type: ignore[index]
            scores.append(value)
            by_rule.append(self.predictor.verdict(prepared, value).refused)
        values = np.asarray(scores)
        return {
            "scores": values,
            "flagged_by_score": values > self.threshold,
            "flagged": np.asarray(by_rule, dtype=bool),
            "undecodable": failed,
        }


def guard_cost(model_path: Path, image_size: int, repeats: int = 200) -> dict[str, float]:
    """Median ms per image at batch 1 on one thread: the graph with the guard, and the same graph
    cut at probabilities and attention (the guard's nodes pruned), interleaved in one run."""
    import onnx
    from onnx.utils import Extractor

    from export.runtime import cpu_session

    full = onnx.load(str(model_path))
    baseline = Extractor(full).extract_model(["image"], ["probabilities", "attention"])
    sessions = {"with_guard": cpu_session(model_path, threads=1)}
    sessions["without_guard"] = cpu_session(baseline.SerializeToString(), threads=1)
    image = np.random.default_rng(SEED).standard_normal((1, 3, image_size, image_size), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(10):  # warm-up
        for session in sessions.values():
            session.run(None, {"image": image})
    for _ in range(repeats):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, {"image": image})
            times[name].append((time.perf_counter() - started) * 1e3)
    medians = {f"{name}_ms": round(float(np.median(values)), 3) for name, values in times.items()}
    medians["guard_ms"] = round(medians["with_guard_ms"] - medians["without_guard_ms"], 3)
    paired = np.asarray(times["with_guard"]) - np.asarray(times["without_guard"])
    medians["guard_ms_paired_median"] = round(float(np.median(paired)), 3)
    medians["repeats"] = repeats
    return medians


def evaluate_shipped(
    work: Path, repository: Path, variants: tuple[str, ...] = ("fp32", "int8")
) -> dict[str, Any]:
    """The served guard of ``repository`` on the OOD sets and the in-distribution test split."""
    from training.downstream.metrics import auroc

    splits = split_files(work)
    sets = ood_sets(splits["test"])
    films = chest_dicom_films()
    report: dict[str, Any] = {"seed": SEED, "test_images": len(splits["test"]), "variants": {}}
    from cxrmsn.repository import read_manifest

    available = read_manifest(repository).models
    for variant in [name for name in variants if name in available]:
        served = ServedGuard(repository, variant)
        test = served.judge(splits["test"])
        film = served.judge(list(films.values()))
        rows = {}
        for name, files in sets.items():
            judged = served.judge(files)
            values = judged["scores"]
            positive = np.r_[np.zeros(len(test["scores"]), bool), np.ones(len(values), bool)]
            rows[name] = {
                "files": len(files),
                "undecodable": judged["undecodable"],
                "scored": len(values),
                "auroc": auroc(np.r_[test["scores"], values], positive) if len(values) else None,
                "flagged_by_score": float(np.mean(judged["flagged_by_score"])) if len(values) else None,
                "flagged": float(np.mean(judged["flagged"])) if len(values) else None,
            }
        guard = served.predictor.guard
        model_path = repository / served.predictor.model_file.path
        report["variants"][variant] = {
            "threshold": served.threshold,
            "threshold_rule": guard.threshold_rule if guard else None,
            "false_rejection_test": float(np.mean(test["flagged"])),
            "false_rejection_test_by_score": float(np.mean(test["flagged_by_score"])),
            "test_scores": {
                "median": float(np.median(test["scores"])),
                "p99": float(np.percentile(test["scores"], 99)),
                "max": float(np.max(test["scores"])),
            },
            "chest_dicom_films": {
                "files": len(films),
                "names": list(films),
                "scores": [round(float(v), 3) for v in film["scores"]],
                "refused": int(np.sum(film["flagged"])),
            },
            "sets": rows,
            "cost": guard_cost(model_path, served.predictor.preprocessing.crop),
        }
    return report


def shipped_table(report: dict[str, Any]) -> str:
    lines = []
    for variant, block in report["variants"].items():
        cost = block["cost"]
        films = block["chest_dicom_films"]
        lines.append(
            f"\n{variant}: threshold {block['threshold']:.3f}; false rejections on the test split "
            f"{block['false_rejection_test']:.1%} of {report['test_images']}; real chest DICOM films refused "
            f"{films['refused']} of {films['files']}; cost {cost['guard_ms']:+.3f} ms/image (median of "
            f"paired differences {cost['guard_ms_paired_median']:+.3f} ms; median "
            f"{cost['with_guard_ms']:.3f} ms with the guard, {cost['without_guard_ms']:.3f} ms without, "
            "batch 1, one thread)"
        )
        lines.append(
            "| set | files | undecodable | AUROC vs test | flagged by score | flagged (score or header) |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|")
        for name, row in block["sets"].items():
            value = "n/a" if row["auroc"] is None else f"{row['auroc']:.3f}"
            by_score = "n/a" if row["flagged_by_score"] is None else f"{row['flagged_by_score']:.0%}"
            flagged = "n/a" if row["flagged"] is None else f"{row['flagged']:.0%}"
            lines.append(
                f"| {name} | {row['files']} | {row['undecodable']} | {value} | {by_score} | {flagged} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.ood_measure", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bundled")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument(
        "--candidates", action="store_true", help="measure the candidate scores (before the guard) instead"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the measurements as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table(s) as Markdown here")
    args = parser.parse_args(argv)
    if args.candidates:
        report = measure(args.work, args.repository)
        text = table(report)
    else:
        report = evaluate_shipped(args.work, args.repository)
        text = shipped_table(report)
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(text.lstrip() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
