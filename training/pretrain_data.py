"""From a config to the pretraining data set: manifest, rows, EHR pipeline, image cache.

Rank 0 builds the manifest (for ``data.source=shared``) and fits the EHR imputer in the
run folder; local rank 0 of each machine builds the image cache. The other ranks wait and
read what was built, so every rank trains on exactly the same arrays. Multi-node runs
need the run folder on storage all nodes share (as resuming does anyway).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from training.config import PretrainConfig
from training.data.cache import load_or_build_cache
from training.data.dataset import PretrainDataset
from training.data.manifest import ManifestRow, read_manifest, resolve_image_path, write_manifest
from training.distributed import DistInfo, barrier, wait_for_file
from training.ehr import EHRPipeline, resolve_features
from training.msn.views import MultiViewTransform

log = logging.getLogger(__name__)
WAIT_S = 24 * 3600.0  # how long other ranks wait for rank 0's imputer or a machine's image cache
PREFETCH_FACTOR = 4  # batches each loader worker keeps ready
# The default's ceiling: the paper's views take about 7.4 ms of one core per image, so 16
# workers make about 2,000 images/s, 2x the goal for ViT-T on one H100/H200 (issue 18);
# more would only multiply processes and prefetched batches on large machines.
MAX_DEFAULT_WORKERS = 16


def cores_per_rank(local_world_size: int | None = None) -> int:
    """This process's share of the cores it may run on (the affinity mask, which Slurm and
    containers set), over the ranks of this machine (torchrun's LOCAL_WORLD_SIZE)."""
    ranks = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, ranks))


def default_workers(local_world_size: int | None = None) -> int:
    """Loader workers per rank (``data.num_workers`` unset): the rank's cores less one for the
    training process itself, at least 1 and at most ``MAX_DEFAULT_WORKERS``."""
    return max(1, min(MAX_DEFAULT_WORKERS, cores_per_rank(local_world_size) - 1))


def resolve_workers(num_workers: int | None, local_world_size: int | None = None) -> int:
    """``data.num_workers`` as a count: None is ``default_workers()``; 0 stays 0."""
    return default_workers(local_world_size) if num_workers is None else num_workers


def loader_settings(workers: int, dist_info: DistInfo) -> dict[str, Any]:
    """DataLoader keywords for ``workers`` processes: pinned batches for a CUDA copy that does
    not block; with workers, they persist across epochs (no re-fork, no re-opened memory map)
    and each keeps ``PREFETCH_FACTOR`` batches ready."""
    settings: dict[str, Any] = {"num_workers": workers, "pin_memory": dist_info.device.type == "cuda"}
    if workers > 0:
        settings |= {"persistent_workers": True, "prefetch_factor": PREFETCH_FACTOR}
    return settings


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Wraps the loader's sampler for persistent workers: yields (epoch seed, index), the seed
    drawn from torch's generator when an epoch's iteration starts, as a new (non-persistent)
    loader iterator draws its workers' base seed. ``EpochSeededDataset`` reseeds each worker
    with it on the epoch's first item, so every epoch's views are those a fresh set of
    workers would make: a resumed run repeats an epoch exactly, as without persistent workers.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())  # the host RNG, no device
        return ((seed, index) for index in self.sampler)


class EpochSeededDataset(Dataset[dict[str, torch.Tensor]]):
    """Item (seed, i) is ``dataset[i]``; a new seed first reseeds this worker process exactly as
    torch seeds a new worker (``seed_worker``)."""

    def __init__(self, dataset: PretrainDataset) -> None:
        self.dataset = dataset
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        seed, item = key
        if seed != self._seed:
            self._seed = seed
            seed_worker(seed)
        return self.dataset[item]


def seed_worker(base_seed: int) -> None:
    """Seed this process's random, torch and numpy generators as torch's DataLoader seeds worker
    ``get_worker_info().id`` of an iterator whose base seed is ``base_seed``."""
    from torch.utils.data._utils.worker import _generate_state

    info = get_worker_info()
    worker = 0 if info is None else info.id
    random.seed(base_seed + worker)
    torch.manual_seed(base_seed + worker)
    np.random.seed(_generate_state(base_seed, worker))


def seeded_for_persistent_workers(
    dataset: PretrainDataset, sampler: Sampler[int], workers: int
) -> tuple[Dataset[Any], Sampler[Any]]:
    """The dataset and sampler to give a DataLoader with ``loader_settings(workers, ...)``: as
    they are without workers, wrapped (``EpochSeededSampler``) with persistent workers."""
    if workers == 0:
        return dataset, sampler
    return EpochSeededDataset(dataset), EpochSeededSampler(sampler)


@dataclass
class PretrainData:
    dataset: PretrainDataset
    rows: list[ManifestRow]  # the rows trained on, in dataset order
    manifest: Path
    ehr: EHRPipeline | None
    summary: dict[str, Any]


def prepare_data(config: PretrainConfig, run_dir: Path, dist_info: DistInfo) -> PretrainData:
    manifest = manifest_path(config, run_dir, dist_info)
    all_rows = read_manifest(manifest)
    rows = select_rows(all_rows, config)
    ehr = _ehr_pipeline(config, all_rows, run_dir, dist_info)
    paths = [resolve_image_path(manifest, row) for row in rows]
    cache = load_or_build_cache(
        paths,
        config.data.cache_size,
        Path(config.data.cache_dir).expanduser(),
        layout="whole",  # the whole film on a padded square: views crop from all of it, as the paper's
        workers=config.data.cache_workers,
        build=dist_info.local_rank == 0,  # one builder per machine; the others wait for its file
        wait_s=WAIT_S,
    )
    usable = cache.usable
    rows = [rows[i] for i in usable]
    features = None if ehr is None else ehr.transform(rows)
    # uint8 views (12x less through shared memory and the copy); train_step normalises them
    transform = MultiViewTransform(config.views, uint8=True)
    dataset = PretrainDataset(cache.images, usable, transform, features, boxes=cache.boxes)
    summary = data_summary(manifest, rows, failed=len(cache.failed))
    return PretrainData(dataset=dataset, rows=rows, manifest=manifest, ehr=ehr, summary=summary)


def manifest_path(config: PretrainConfig, run_dir: Path, dist_info: DistInfo) -> Path:
    """``data.manifest``, or (``data.source=shared``) a manifest built once into the run folder."""
    if config.data.source == "manifest":
        if not config.data.manifest:
            raise ValueError("data.manifest is empty: pass --manifest PATH (or --set data.source=shared)")
        path = Path(config.data.manifest).expanduser()
        if not path.is_file():
            raise ValueError(f"data.manifest {path} does not exist (build one with `build-manifest`)")
        return path
    path = run_dir / "manifest.csv"
    if dist_info.is_main and not path.is_file():
        from training.data.shared import build_shared
        from training.data_root import shared_data_root

        root = shared_data_root(config.data.shared_root or None, check=True)
        write_manifest(path, build_shared(root, seed=config.train.seed))
    barrier()
    return path


def select_rows(rows: list[ManifestRow], config: PretrainConfig) -> list[ManifestRow]:
    """Rows of the chosen splits and data sets, then a seeded subset of ``max_images``."""
    data = config.data
    chosen = [r for r in rows if r.split in data.splits and (not data.datasets or r.dataset in data.datasets)]
    if not chosen:
        raise ValueError(f"no manifest rows in splits {data.splits} and data sets {data.datasets or 'any'}")
    if 0 < data.max_images < len(chosen):
        picked = np.random.default_rng(config.train.seed).choice(len(chosen), data.max_images, replace=False)
        chosen = [chosen[i] for i in sorted(picked)]
    return chosen


def _ehr_pipeline(
    config: PretrainConfig, all_rows: list[ManifestRow], run_dir: Path, dist_info: DistInfo
) -> EHRPipeline | None:
    features = resolve_features(config.ehr.features)
    if not features:
        return None
    folder = run_dir / "ehr"
    if dist_info.is_main and not (folder / "encoding.json").is_file():
        datasets = config.data.datasets
        train_rows = [r for r in all_rows if r.split == "train" and (not datasets or r.dataset in datasets)]
        pipeline = EHRPipeline.fit(
            train_rows,
            features,
            age_min=config.ehr.age_min,
            age_max=config.ehr.age_max,
            trees=config.ehr.imputer_trees,
            max_iter=config.ehr.imputer_max_iter,
            fit_rows=config.ehr.imputer_fit_rows,
            seed=config.train.seed,
            mortality_outside_admission=config.ehr.mortality_outside_admission,
        )
        pipeline.save(folder)
        log.info("EHR imputer fitted on %d training rows: %s", len(train_rows), pipeline.fit_summary)
    wait_for_file(folder / "encoding.json", timeout_s=WAIT_S, what="the EHR imputer")
    pipeline = EHRPipeline.load(folder)
    if pipeline.features != features:
        raise ValueError(f"{folder} holds an imputer for {pipeline.features}, the config asks for {features}")
    return pipeline


def data_summary(manifest: Path, rows: list[ManifestRow], *, failed: int) -> dict[str, Any]:
    return {
        "manifest": str(manifest.resolve()),
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "images": len(rows),
        "patients": len({(r.dataset, r.patient_id) for r in rows}),
        "undecodable_images_skipped": failed,
        "datasets": dict(sorted(Counter(r.dataset for r in rows).items())),
        "splits": dict(sorted(Counter(r.split for r in rows).items())),
    }
