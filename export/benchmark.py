"""CPU (or GPU) latency of every variant in a model repository, measured in one run.

    python -m export.benchmark model_repository [--batch-sizes 1 8] [--repeats 30]
    python -m export.benchmark model_repository --provider cuda   # onnxruntime-gpu hosts

Each variant's file is loaded through ``verified_model_path`` (so its sha256 is
checked), run ``warmup`` times, then timed ``repeats`` times per batch size; the
median and the 90th percentile are reported in milliseconds. With a GPU provider
each output is also compared with the fp32 model on the CPU (max abs difference).

Each result is labelled with the provider the session really runs on
(``session.get_providers()[0]``); a session that fell back from the requested provider (a
missing CUDA or TensorRT library) is an error, not a CPU figure under a GPU label.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class ProviderFallbackError(RuntimeError):
    """The session does not run on the provider the benchmark asked for."""


def running_provider(session: Any, provider: str) -> str:
    """The provider ``session`` really runs on; ProviderFallbackError unless it is ``provider``'s."""
    running = str(session.get_providers()[0])
    wanted = PROVIDERS[provider][0]
    if running != wanted:
        raise ProviderFallbackError(
            f"asked for {wanted} but the session runs on {running} (providers {session.get_providers()}): "
            "check onnxruntime-gpu's CUDA/cuDNN/TensorRT libraries"
        )
    return running


@dataclass(frozen=True)
class Timing:
    variant: str
    batch_size: int
    median_ms: float
    p90_ms: float
    images_per_s: float
    max_abs_diff_vs_cpu_fp32: dict[str, float] | None = None
    provider: str = ""  # session.get_providers()[0]: what really ran


def time_session(session: Any, images: np.ndarray, *, repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` runs after ``warmup`` untimed ones."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    feed = {session.get_inputs()[0].name: images}
    for _ in range(warmup):
        session.run(None, feed)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        seconds.append(time.perf_counter() - start)
    return seconds


def interleaved_medians(
    first: Any, second: Any, images: np.ndarray, *, repeats: int, warmup: int
) -> tuple[float, float]:
    """Median seconds of two sessions timed in alternation, so load from elsewhere hits both alike."""
    time_session(first, images, repeats=1, warmup=warmup)
    time_session(second, images, repeats=1, warmup=warmup)
    a, b = [], []
    for _ in range(repeats):
        a += time_session(first, images, repeats=1, warmup=0)
        b += time_session(second, images, repeats=1, warmup=0)
    return statistics.median(a), statistics.median(b)


def summarise(variant: str, batch_size: int, seconds: list[float]) -> Timing:
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return Timing(variant, batch_size, median * 1e3, p90 * 1e3, batch_size / median)


def benchmark_repository(
    repository: str | os.PathLike[str],
    *,
    batch_sizes: tuple[int, ...] = (1, 8),
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 0,
    provider: str = "cpu",
    variants: tuple[str, ...] | None = None,
) -> list[Timing]:
    """Time every (or each named) variant at each batch size, in one process and one run."""
    from cxrmsn.repository import read_manifest, verified_model_path
    from export.runtime import cpu_session, generated_images, max_abs_difference, run

    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
    manifest = read_manifest(repository)
    # The pre-optimised fp32 file is specific to the CPU provider; int8 has only CPU kernels.
    cpu_only = () if provider == "cpu" else ("fp32_optimised", "int8")
    names = variants or tuple(name for name in manifest.models if name not in cpu_only)
    unknown = sorted(set(names) - set(manifest.models))
    if unknown:
        raise ValueError(f"variants {unknown} are not in the manifest; it has {sorted(manifest.models)}")
    image_size = int(manifest.preprocess_config.crop)
    reference = None
    if provider != "cpu":
        reference = cpu_session(verified_model_path(repository, manifest, manifest.default_variant))
    timings = []
    for name in names:
        path = verified_model_path(repository, manifest, name)
        session = _session(path, provider, threads, max_batch=max(batch_sizes), image_size=image_size)
        running = running_provider(session, provider)
        for batch in batch_sizes:
            images = generated_images(batch, image_size=image_size, seed=batch)
            timing = summarise(name, batch, time_session(session, images, repeats=repeats, warmup=warmup))
            difference = None
            if reference is not None:
                difference = max_abs_difference(run(session, images), run(reference, images))
            timings.append(
                Timing(**{**asdict(timing), "max_abs_diff_vs_cpu_fp32": difference, "provider": running})
            )
    return timings


def tensorrt_options(path: Path, *, max_batch: int, image_size: int) -> dict[str, str]:
    """The TensorRT provider configured as configs/gpu.pbtxt configures Triton's accelerator
    and as serving configures it (``serving.backends.tensorrt_options``); engines are cached
    per model file under the serving cache (never beside a possibly read-only repository)."""
    from serving.backends import TRT_PROFILE_MAX, tensorrt_cache_dir
    from serving.backends import tensorrt_options as serving_options

    cache = tensorrt_cache_dir() / path.parent.name / path.stem
    cache.mkdir(parents=True, exist_ok=True)
    return serving_options(cache, image_size=image_size, max_batch=max(max_batch, TRT_PROFILE_MAX))


def _session(path: Path, provider: str, threads: int, *, max_batch: int, image_size: int) -> Any:
    import onnxruntime as ort

    if provider == "cpu":
        from export.runtime import cpu_session

        return cpu_session(path, threads=threads)
    missing = set(PROVIDERS[provider]) - set(ort.get_available_providers())
    if missing:
        raise ValueError(f"onnxruntime here lacks {sorted(missing)}: install onnxruntime-gpu in its own venv")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers: list[Any] = list(PROVIDERS[provider])
    if provider == "tensorrt":
        providers[0] = (providers[0], tensorrt_options(path, max_batch=max_batch, image_size=image_size))
    return ort.InferenceSession(str(path), options, providers=providers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("repository", type=Path, help="a model repository written by `cxr-msn export`")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per variant and batch size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    parser.add_argument("--variants", nargs="+", help="only these variants (default: all in the manifest)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args(argv)
    timings = benchmark_repository(
        args.repository,
        batch_sizes=tuple(args.batch_sizes),
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        provider=args.provider,
        variants=tuple(args.variants) if args.variants else None,
    )
    if args.json:
        for timing in timings:
            print(json.dumps(asdict(timing)))
        return 0
    print(f"{'variant':<16}{'batch':>6}{'median ms':>12}{'p90 ms':>10}{'images/s':>10}  provider")
    for t in timings:
        print(
            f"{t.variant:<16}{t.batch_size:>6}{t.median_ms:>12.2f}{t.p90_ms:>10.2f}{t.images_per_s:>10.1f}"
            f"  {t.provider}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
