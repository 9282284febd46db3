"""The benchmark suite: this project against the machine's limit and the incumbent, one run.

    make bench                      # or: python -m benchmarks.run --out benchmarks
    python -m benchmarks.run --quick  # fewer repeats, ViT-T only (a smoke run)
    python -m benchmarks.run --only decoding  # decode + preprocess rows alone (a minute)
    python -m benchmarks.run --only service   # raw ONNX Runtime and the service over HTTP, ViT-S

Every row is a median over repeated runs with min and max, measured in this run on the
same inputs. Writes benchmarks/results.json (the machine: CPU model and instruction-set
flags, package versions; rows: name, unit, median, min, max, n) and benchmarks/results.md
(results-decoding.* with ``--only decoding``), and prints the table and the target ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import inputs, machine, service
from cxrmsn.model import ARCHITECTURES


@dataclass
class Row:
    name: str
    unit: str
    median: float
    min: float
    max: float
    n: int


class Suite:
    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self.rows: list[Row] = []

    def add(self, name: str, unit: str, values: list[float]) -> Row:
        row = Row(name, unit, statistics.median(values), min(values), max(values), len(values))
        self.rows.append(row)
        print(f"{name:58s} {row.median:12.2f} {unit}", flush=True)
        return row

    def rate(
        self,
        name: str,
        items: float,
        work: Callable[[], object],
        *,
        warmup: int = 2,
        unit: str = "images/s",
        ms: bool = False,
    ) -> Row:
        """items/s of ``work`` over ``self.repeats`` timed calls; with ``ms`` also ms per item."""
        for _ in range(warmup):
            work()
        values = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            work()
            values.append(items / (time.perf_counter() - started))
        row = self.add(name, unit, values)
        if ms:
            self.add(f"  {name}, ms per image", "ms", [1000.0 / value for value in values])
        return row

    def value(self, name: str) -> float:
        return next(row.median for row in self.rows if row.name == name)


def vit_gflop(architecture: str) -> float:
    """Forward GFLOP per 224 px image (2 x multiply-adds) of a ViT encoder + 14-label head."""
    spec = ARCHITECTURES[architecture]
    tokens, dim = (spec.img_size // spec.patch_size) ** 2 + 1, spec.embed_dim
    per_block = 12 * tokens * dim**2 + 2 * tokens**2 * dim
    patch_embed = (tokens - 1) * 3 * spec.patch_size**2 * dim
    return 2 * (spec.depth * per_block + patch_embed + dim * 14) / 1e9


def matmul_limit(suite: Suite) -> float:
    """GFLOP/s of a large float32 matrix multiply on all cores: the machine's practical limit.

    The best of torch (MKL/oneDNN), numpy (OpenBLAS) and ONNX Runtime (MLAS, the kernels the
    models run on) multiplying two 4096 x 4096 matrices.
    """
    import onnxruntime as ort
    import torch

    size = 4096
    flop = 2 * size**3 / 1e9
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    session = ort.InferenceSession(_matmul_model(size), providers=["CPUExecutionProvider"])
    ta = torch.from_numpy(a)
    rows = [
        suite.rate("machine: float32 matmul 4096 torch", flop, partial(torch.mm, ta, ta), unit="GFLOP/s"),
        suite.rate("machine: float32 matmul 4096 numpy", flop, partial(np.matmul, a, a), unit="GFLOP/s"),
        suite.rate(
            "machine: float32 matmul 4096 onnxruntime", flop,
            partial(session.run, None, {"a": a, "b": a}), unit="GFLOP/s",
        ),
    ]  # fmt: skip
    return max(row.median for row in rows)


def _matmul_model(size: int) -> bytes:
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in ("a", "b")]
    output = helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def run(out: Path, *, quick: bool) -> list[Row]:
    suite = Suite(repeats=5 if quick else 15)
    architectures = ["vit_tiny_patch16_224"] if quick else ["vit_tiny_patch16_224", "vit_small_patch16_224"]
    files = inputs.benchmark_files()
    large = inputs.large_files()
    files[SERVICE_J2K] = [large["jpeg2000 lossless 12-bit"]]
    limit = matmul_limit(suite)
    with tempfile.TemporaryDirectory(prefix="cxr-msn-bench-") as scratch:
        repositories = {
            arch: inputs.export_random_model(arch, Path(scratch) / arch) for arch in architectures
        }
        batches = {size: inputs.preprocessed_batch(files["png"], size) for size in (1, 8)}
        for arch, repository in repositories.items():
            bench_onnxruntime(suite, arch, repository, batches, limit)
            bench_pytorch(suite, arch, repository, batches)
        bench_decoding(suite, files)
        bench_reduced_decoding(suite, large)
        bench_pipeline(suite, repositories[architectures[-1]], files, architectures[-1])
        bench_torchxrayvision(suite, files)
        service.bench_service(suite, repositories[architectures[-1]], files, architectures[-1], quick=quick)
    bench_pretraining(suite, architectures, quick=quick)
    write_results(suite, out, targets(suite, architectures[-1]))
    return suite.rows


def run_decoding(out: Path, *, quick: bool) -> list[Row]:
    """The decode + preprocess rows alone (``--only decoding``): results-decoding.{json,md}."""
    suite = Suite(repeats=5 if quick else 15)
    bench_decoding(suite, inputs.benchmark_files())
    bench_reduced_decoding(suite, inputs.large_files())
    write_results(suite, out, decoding_targets(suite), stem="results-decoding")
    return suite.rows


def run_service(out: Path, *, quick: bool) -> list[Row]:
    """Raw ONNX Runtime and the service (PNG, DICOM, JPEG 2000) alone (``--only service``):
    results-service.{json,md} with the two service targets, the baseline measured in this run."""
    suite = Suite(repeats=5 if quick else 15)
    arch = "vit_small_patch16_224"
    files = inputs.benchmark_files()
    files[SERVICE_J2K] = [inputs.large_files()["jpeg2000 lossless 12-bit"]]
    with tempfile.TemporaryDirectory(prefix="cxr-msn-bench-") as scratch:
        repository = inputs.export_random_model(arch, Path(scratch) / arch)
        batches = {8: inputs.preprocessed_batch(files["png"], 8)}
        bench_onnxruntime(suite, arch, repository, batches, limit=float("nan"))
        service.bench_service(suite, repository, files, arch, quick=quick)
    write_results(suite, out, service_targets(suite, arch), stem="results-service")
    return suite.rows


def bench_onnxruntime(
    suite: Suite, arch: str, repository: Path, batches: dict[int, np.ndarray], limit: float
) -> None:
    import onnxruntime as ort

    from cxrmsn.repository import read_manifest

    manifest = read_manifest(repository)
    for variant, entry in sorted(manifest.models.items()):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            str(repository / entry.path), options, providers=["CPUExecutionProvider"]
        )
        for size, batch in batches.items():
            row = suite.rate(
                f"onnxruntime {arch} {variant} batch {size}",
                size,
                partial(session.run, None, {"image": batch}),
            )
            if variant == "int8" or np.isnan(limit):
                continue  # integer MatMuls are not bound by the float32 limit (or no limit measured)
            share = row.median * vit_gflop(arch) / limit
            name = f"  achieved GFLOP/s as share of the matmul limit: {arch} {variant} batch {size}"
            suite.add(name, "fraction", [share])


def bench_pytorch(suite: Suite, arch: str, repository: Path, batches: dict[int, np.ndarray]) -> None:
    import torch

    from cxrmsn.checkpoint import load_classifier

    model, _ = load_classifier(repository.parent / f"{arch}.safetensors")
    with torch.inference_mode():
        for size, batch in batches.items():
            tensor = torch.from_numpy(batch)
            suite.rate(f"pytorch eager {arch} batch {size}", size, partial(model, tensor))


def _decode_all(blobs: list[bytes], min_size: int | None = None) -> list[np.ndarray]:
    """Decode + preprocess (224 px) as a caller does: full resolution, or reduced to ``min_size``."""
    from cxrmsn.imaging import decode
    from cxrmsn.preprocess import preprocess

    decoded = [decode(data, min_size=min_size) for data in blobs]
    return [preprocess(image.pixels, extent=image.extent) for image in decoded]


def _prepare(data: bytes, config: Any, min_size: int | None) -> np.ndarray:
    from cxrmsn.imaging import decode
    from cxrmsn.preprocess import preprocess

    image = decode(data, min_size=min_size)
    return preprocess(image.pixels, config, extent=image.extent)


def _next_step(parts: Any, batch: Any, counter: Iterator[int]) -> None:
    from training.train_step import train_step

    train_step(parts, batch, next(counter))


def bench_decoding(suite: Suite, files: dict[str, list[bytes]]) -> None:
    """The benchmark files, at full resolution and as a 224 px model's caller decodes them
    (``min_size=PreprocessConfig().decode_min_side()``, 448)."""
    from cxrmsn.preprocess import DEFAULT_PREPROCESS

    min_size = DEFAULT_PREPROCESS.decode_min_side()
    for kind, blobs in files.items():
        if kind == SERVICE_J2K:
            continue  # bench_reduced_decoding times it
        suite.rate(f"decode + preprocess {kind}", len(blobs), partial(_decode_all, blobs))
        suite.rate(
            f"decode + preprocess {kind}, min_size {min_size}",
            len(blobs),
            partial(_decode_all, blobs, min_size),
        )


#: The 2048 x 2500 JPEG 2000 DICOM the service is also timed on.
SERVICE_J2K = "dicom jpeg2000 2048x2500"
#: Model input sizes the reduced rows are timed for: the suite's ViTs and the bundled model.
REDUCED_FOR = (224, 64)


def reduced_row_names(kind: str, resize: int, factor: int | None = None) -> tuple[str, str, str]:
    """(full row, reduced row, speed-up row) names for one generated file and model size.

    The reduced row says the factor the decoder chose (1: the syntax cannot be reduced, or
    the image is not large enough; it is then the full decode with ``min_size`` passed).
    """
    from cxrmsn.preprocess import PreprocessConfig

    base = f"decode + preprocess 2048x2500 {kind}, {resize} px model"
    min_size = PreprocessConfig(resize=resize, crop=resize).decode_min_side()
    reduced = f"{base}: min_size {min_size}" + (f", decoded at 1/{factor}" if factor else "")
    return f"{base}: full", reduced, f"  speed-up min_size / full: {kind}, {resize} px model"


def bench_reduced_decoding(suite: Suite, files: dict[str, bytes]) -> None:
    """Issue 18: decode + preprocess of one 2048 x 2500 radiograph per syntax, at full
    resolution (the baseline, timed here) and reduced to the model's input size."""
    from cxrmsn.imaging import decode
    from cxrmsn.preprocess import PreprocessConfig

    for kind, data in files.items():
        for resize in REDUCED_FOR:
            config = PreprocessConfig(resize=resize, crop=resize)
            factor = decode(data, min_size=config.decode_min_side()).info.decode_reduction
            full_name, reduced_name, ratio_name = reduced_row_names(kind, resize, factor)
            full = suite.rate(full_name, 1, partial(_prepare, data, config, None), warmup=1, ms=True)
            reduced = suite.rate(
                reduced_name, 1, partial(_prepare, data, config, config.decode_min_side()), warmup=1, ms=True
            )
            suite.add(ratio_name, "x", [reduced.median / full.median])


def bench_pipeline(suite: Suite, repository: Path, files: dict[str, list[bytes]], arch: str) -> None:
    """This project end to end in-process: bytes -> decode -> preprocess -> ONNX Runtime, batch 8."""
    from serving.predictor import load_predictor

    png = files["png"]
    for variant in ("fp32", "int8"):
        predictor = load_predictor(repository, variant=variant)

        def work(predictor: Any = predictor) -> None:
            for start in range(0, len(png), 8):
                chunk = [predictor.prepare(data).model_input for data in png[start : start + 8]]
                predictor.infer(np.stack(chunk))

        suite.rate(f"this project in-process PNG {arch} {variant} batch 8", len(png), work)


def bench_torchxrayvision(suite: Suite, files: dict[str, list[bytes]]) -> None:
    """The incumbent: torchxrayvision's DenseNet-121 with its own reading and preprocessing."""
    import io

    import skimage.io
    import torch
    import torchvision
    import torchxrayvision as xrv

    model = xrv.models.DenseNet(weights=None).eval()  # timing does not depend on weight values
    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])
    png = files["png"]

    def prepare(data: bytes) -> np.ndarray:
        image = xrv.datasets.normalize(skimage.io.imread(io.BytesIO(data)), 255)
        image = image.mean(2) if image.ndim == 3 else image
        return np.asarray(transform(image[None]), dtype=np.float32)

    def work() -> None:
        with torch.inference_mode():
            for start in range(0, len(png), 8):
                model(torch.from_numpy(np.stack([prepare(data) for data in png[start : start + 8]])))

    suite.rate("torchxrayvision DenseNet-121 PNG batch 8 (incumbent)", len(png), work, warmup=1)


def bench_pretraining(suite: Suite, architectures: list[str], *, quick: bool) -> None:
    """One MSN + EHR (D) pretraining step on synthetic views of the paper's sizes."""
    import torch

    from training.benchmark import synthetic_batch
    from training.config import PretrainConfig, apply_overrides
    from training.distributed import DistInfo
    from training.train_step import build_parts

    batch_size, steps = 8, (3 if quick else 6)
    for arch in architectures:
        config = apply_overrides(PretrainConfig(name="benchmark"), [f"model.arch={arch}"])
        torch.manual_seed(0)
        dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        parts = build_parts(config, ehr_dim=3, steps_per_epoch=steps + 1, dist_info=dist)
        batch = synthetic_batch(config, batch_size, 3)
        counter = iter(range(10**6))
        suite.rate(
            f"pretraining step {arch} MSN+D batch {batch_size}",
            batch_size,
            partial(_next_step, parts, batch, counter),
            warmup=1,
        )


def decoding_targets(suite: Suite) -> list[tuple[str, float, float]]:
    ratio = suite.value(reduced_row_names("jpeg2000 lossless 12-bit", 224)[2])
    return [("JPEG 2000 2048x2500 decode + preprocess, reduced / full, 224 px model (>= 10)", ratio, 10.0)]


def service_targets(suite: Suite, arch: str) -> list[tuple[str, float, float]]:
    raw8 = suite.value(f"onnxruntime {arch} fp32 batch 8")
    service8 = suite.value(f"service {arch} fp32 PNG concurrency 8")
    service_j2k = suite.value(f"service {arch} fp32 DICOM JPEG 2000 2048x2500 concurrency 8")
    return [
        ("service JPEG 2000 2048x2500 c8 / service PNG c8 (>= 0.8)", service_j2k / service8, 0.8),
        ("service PNG c8 / raw ONNX Runtime batch 8 (>= 0.85)", service8 / raw8, 0.85),
    ]


def targets(suite: Suite, arch: str) -> list[tuple[str, float, float]]:
    """(target, measured ratio, required ratio) from this run's medians."""
    raw8 = suite.value(f"onnxruntime {arch} fp32 batch 8")
    service8 = suite.value(f"service {arch} fp32 PNG concurrency 8")
    int8 = suite.value(f"onnxruntime {arch} int8 batch 8")
    pipeline = suite.value(f"this project in-process PNG {arch} fp32 batch 8")
    pipeline_int8 = suite.value(f"this project in-process PNG {arch} int8 batch 8")
    incumbent = suite.value("torchxrayvision DenseNet-121 PNG batch 8 (incumbent)")
    decode = suite.value("decode + preprocess png")
    decode_share = (1 / decode) / (1 / service8) if service8 else float("nan")
    return [
        *decoding_targets(suite),
        *service_targets(suite, arch),
        ("int8 / fp32 throughput, batch 8 (>= 1.8)", int8 / raw8, 1.8),
        (f"{arch} fp32 in-process / torchxrayvision DenseNet-121 (>= 1.5)", pipeline / incumbent, 1.5),
        (f"{arch} int8 in-process / torchxrayvision DenseNet-121 (>= 1.5)", pipeline_int8 / incumbent, 1.5),
        ("decode + preprocess share of service time per image (< 0.15)", decode_share, 0.15),
    ]


def write_results(
    suite: Suite, out: Path, goals: list[tuple[str, float, float]], *, stem: str = "results"
) -> None:
    """``stem``.json ({"machine": ..., "rows": [...]}) and ``stem``.md, the machine line first."""
    out.mkdir(parents=True, exist_ok=True)
    info = machine.machine_info()
    document = {"machine": info, "rows": [asdict(row) for row in suite.rows]}
    (out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        f"Machine: {machine.describe(info)}",
        "",
        "| name | unit | median | min | max | n |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {r.name.strip()} | {r.unit} | {r.median:.3f} | {r.min:.3f} | {r.max:.3f} | {r.n} |"
            for r in suite.rows
        ),
        "",
        "| target | measured | required | met |",
        "|---|---:|---:|---|",
    ]
    for name, measured, required in goals:
        met = measured < required if "<" in name else measured >= required
        lines.append(f"| {name} | {measured:.3f} | {required} | {'yes' if met else 'no'} |")
    text = "\n".join(lines) + "\n"
    (out / f"{stem}.md").write_text(text)
    print("\n" + text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="where results.json/.md go")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and ViT-T only")
    parser.add_argument(
        "--only",
        choices=["decoding", "service"],
        help="run one part alone: writes results-decoding.{json,md} or results-service.{json,md}",
    )
    args = parser.parse_args(argv)
    if args.only == "decoding":
        run_decoding(args.out, quick=args.quick)
    elif args.only == "service":
        run_service(args.out, quick=args.quick)
    else:
        run(args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
