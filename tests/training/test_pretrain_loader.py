"""The pretraining loader (issue 18): ``loader_settings`` (persistent workers, prefetching) and
the ``data.num_workers`` default, without changing a single view: persistent workers are
reseeded every epoch as fresh ones would be, so runs (and resumed runs) repeat exactly."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from tests.training.pretrain_fixtures import CPU
from training.config import PretrainConfig, apply_overrides
from training.data.dataset import PretrainDataset
from training.msn.views import MultiViewTransform
from training.pretrain import epoch_seed, make_loader
from training.pretrain_data import PretrainData, default_workers, resolve_workers

VIEWS = ["views.target_size=32", "views.rand_size=32", "views.focal_size=16", "views.focal_views=2"]


def _data(config: PretrainConfig, count: int = 24) -> PretrainData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 48, 48), dtype=np.uint8)
    dataset = PretrainDataset(images, np.arange(count), MultiViewTransform(config.views, uint8=True))
    return PretrainData(dataset=dataset, rows=[], manifest=Path("unused.csv"), ehr=None, summary={})


def _config(workers: int | None) -> PretrainConfig:
    return apply_overrides(PretrainConfig(), [*VIEWS, "train.batch_size=4", f"data.num_workers={workers}"])


def _old_loader(data: PretrainData, config: PretrainConfig, workers: int) -> tuple[Any, Any]:
    """make_loader before issue 18: no persistent workers, torch's default generator."""
    sampler: DistributedSampler[int] = DistributedSampler(
        data.dataset, num_replicas=1, rank=0, shuffle=True, seed=config.train.seed, drop_last=True
    )
    loader = DataLoader(data.dataset, batch_size=4, sampler=sampler, num_workers=workers, drop_last=True)
    return loader, sampler


def _epochs(loader: Any, sampler: Any, epochs: range, steps: int) -> list[Any]:
    """What run_epoch does with the loader: seed, set the epoch, take ``steps`` batches; then one
    draw from torch's generator, standing in for the step's masking."""
    out = []
    for epoch in epochs:
        torch.manual_seed(epoch_seed(0, epoch, 0))
        sampler.set_epoch(epoch)
        batches = list(itertools.islice(loader, steps))
        out.append((batches, torch.rand(3)))
    return out


def _equal(a: list[Any], b: list[Any]) -> bool:
    for (batches_a, after_a), (batches_b, after_b) in zip(a, b, strict=True):
        if not torch.equal(after_a, after_b) or len(batches_a) != len(batches_b):
            return False
        for x, y in zip(batches_a, batches_b, strict=True):
            if any(not torch.equal(x[name], y[name]) for name in x):
                return False
    return True


@pytest.mark.slow
def test_persistent_workers_make_the_views_of_fresh_workers_and_resume_exactly() -> None:
    config = _config(2)
    data = _data(config)
    loader, sampler = make_loader(data, config, CPU)
    assert loader.persistent_workers and loader.num_workers == 2 and loader.prefetch_factor == 4
    # 4 of the 6 batches of each epoch (train.max_steps_per_epoch): prefetched work is left over
    new = _epochs(loader, sampler, range(3), steps=4)
    old_loader, old_sampler = _old_loader(data, config, 2)
    old = _epochs(old_loader, old_sampler, range(3), steps=4)
    assert _equal(new, old)
    # the epochs differ from each other (the reseeding is per epoch, not a constant)
    assert not torch.equal(new[1][0][0]["target"], new[2][0][0]["target"])
    # a resumed run: a new loader (new workers) at epoch 2 repeats the uninterrupted epoch 2
    fresh_loader, fresh_sampler = make_loader(data, config, CPU)
    resumed = _epochs(fresh_loader, fresh_sampler, range(2, 3), steps=4)
    assert _equal(resumed, new[2:])


def test_without_workers_the_loader_is_unchanged() -> None:
    config = _config(0)
    data = _data(config)
    loader, sampler = make_loader(data, config, CPU)
    assert loader.num_workers == 0 and not loader.persistent_workers and loader.dataset is data.dataset
    old_loader, old_sampler = _old_loader(data, config, 0)
    assert _equal(_epochs(loader, sampler, range(2), 6), _epochs(old_loader, old_sampler, range(2), 6))


def test_num_workers_defaults_to_the_cores_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PretrainConfig().data.num_workers is None
    assert _config(None).data.num_workers is None  # data.num_workers=none on the command line
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers(None) == default_workers() == 15
    assert resolve_workers(None, 2) == 7 and resolve_workers(0) == 0 and resolve_workers(3) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(128)))
    assert resolve_workers(None) == 16  # the ceiling (MAX_DEFAULT_WORKERS)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert resolve_workers(None) == 1
    with pytest.raises(ValueError, match="num_workers"):
        _config(-1)


def test_the_small_cpu_recipes_keep_loading_in_process() -> None:
    from training.configs import config_names, named_config

    small = [name for name in config_names() if name.startswith("small-") or name == "smoke"]
    assert len(small) > 3 and all(named_config(name).data.num_workers == 0 for name in small)
    assert named_config("vit_t-D").data.num_workers is None  # the paper's recipes: the default
