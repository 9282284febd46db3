"""The pretraining step does not wait for the device: statistics stay tensors until read.

Host/device synchronisations cannot be observed on a CPU, so the operations that force one
on CUDA (a tensor read as a Python number or list, ``unique``, ``nonzero``, truth values)
are counted with a torch function mode while the step runs.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.training.pretrain_fixtures import CPU, STEP_SMALL
from training.benchmark import synthetic_batch
from training.config import PretrainConfig, apply_overrides
from training.distributed import DistInfo
from training.train_step import EpochSums, StepStats, anchor_inputs, build_parts, run_step, train_step

SYNCING = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__bool__,
    torch.Tensor.__index__,
    torch.Tensor.unique,
    torch.unique,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.numpy,
}


class SyncCounter(TorchFunctionMode):
    """Counts syncing calls, except on ``host_tensors`` (AdamW's step counters, which stay on
    the host on CUDA too, so reading them costs no synchronisation)."""

    def __init__(self, host_tensors: set[int] | None = None) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.host_tensors = host_tensors or set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in SYNCING and not (args and id(args[0]) in self.host_tensors):
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _parts(method: str = "msn") -> tuple[Any, dict[str, torch.Tensor]]:
    config = apply_overrides(PretrainConfig(), [*STEP_SMALL, f"method={method}"])
    torch.manual_seed(0)
    ehr_dim = 3 if method == "msn" else 0
    if method != "msn":
        config = apply_overrides(config, ["ehr.features="])
    parts = build_parts(config, ehr_dim=ehr_dim, steps_per_epoch=4, dist_info=CPU)
    return parts, synthetic_batch(config, 4, ehr_dim)


def test_an_msn_step_reads_nothing_back_until_its_statistics_are_read() -> None:
    parts, batch = _parts()
    parts.anchor.train()
    run_step(parts, batch, step=0)  # first call: lazy initialisation outside the count
    steps = {id(state["step"]) for state in parts.optimizer.state.values()}
    assert steps and all(state["step"].device.type == "cpu" for state in parts.optimizer.state.values())
    counter = SyncCounter(steps)
    with counter:
        stats = run_step(parts, batch, step=1)
    assert counter.calls == []
    assert isinstance(stats, StepStats)
    for name in ("loss", "cross_entropy", "mean_entropy", "target_max", "distinct_targets", "agreement"):
        assert isinstance(stats.values[name], torch.Tensor), name
    with counter:
        read = stats.read()
    assert counter.calls == ["tolist"]  # one transfer for every statistic and the finiteness flag
    assert all(isinstance(value, float) for value in read.values())
    assert 1 <= read["distinct_targets"] <= 16 and 0 <= read["agreement"] <= 1


def test_distinct_targets_counts_like_unique() -> None:
    parts, batch = _parts()
    stats = run_step(parts, batch, step=0)
    # recompute from the same inputs with unique(): the index_fill count must agree
    targets = torch.eye(16)[torch.tensor([3, 3, 5, 0, 5, 15])]
    chosen = torch.zeros(16).index_fill_(0, targets.argmax(dim=1), 1.0).sum()
    assert float(chosen) == targets.argmax(dim=1).unique().numel() == 4
    assert stats.read()["distinct_targets"] >= 1


def test_a_non_finite_loss_raises_when_read_and_in_the_epoch_sums() -> None:
    parts, batch = _parts()
    good = run_step(parts, batch, step=0)
    bad_batch = dict(batch, target=torch.full_like(batch["target"], float("nan")))
    bad = run_step(parts, bad_batch, step=1)  # no exception: nothing is read yet
    with pytest.raises(FloatingPointError, match="step 1"):
        bad.read()
    sums = EpochSums(("loss", "cross_entropy"), torch.device("cpu"))
    sums.add(good)
    assert set(sums.means()) == {"loss", "cross_entropy"}
    sums.add(bad)
    sums.add(good)
    with pytest.raises(FloatingPointError, match="step 1"):
        sums.means()


def test_epoch_sums_average_the_steps() -> None:
    parts, batch = _parts()
    steps = [run_step(parts, batch, step=i) for i in range(3)]
    sums = EpochSums(("loss", "lr"), torch.device("cpu"))
    for stats in steps:
        sums.add(stats)
    means = sums.means()
    reads = [s.read() for s in steps]
    assert means["loss"] == pytest.approx(sum(r["loss"] for r in reads) / 3)
    assert means["lr"] == pytest.approx(sum(r["lr"] for r in reads) / 3)


@pytest.mark.parametrize("method", ["dino", "mae"])
def test_baselines_still_return_floats_through_train_step(method: str) -> None:
    parts, batch = _parts(method)
    stats = train_step(parts, batch, step=0)
    assert all(isinstance(value, float) for value in stats.values())


def test_focal_views_are_copied_as_loaded_then_rearranged_view_major() -> None:
    parts, batch = _parts()
    moved: list[tuple[int, ...]] = []
    original = torch.Tensor.to

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func is original and args and isinstance(args[0], torch.Tensor):
                moved.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    with Recorder():
        groups, _ = anchor_inputs(batch, parts)
    # the tensors handed to .to() are the loader's [B, V, 3, S, S], not a host-side [V * B, ...] copy
    assert tuple(batch["focal"].shape) in moved and tuple(batch["rand"].shape) in moved
    assert groups[1].shape == (2 * 4, 3, 32, 32)
    assert torch.equal(groups[1][5], batch["focal"][1, 1])


def test_one_visible_gpu_per_process_is_cuda_0_whatever_the_local_rank() -> None:
    from training.distributed import cuda_index

    assert cuda_index(3, 8) == 3  # every GPU of the machine visible
    assert cuda_index(3, 1) == 0  # CUDA_VISIBLE_DEVICES set per task
    with pytest.raises(ValueError, match="LOCAL_RANK 3"):
        cuda_index(3, 2)


def test_the_collective_timeout_outlasts_a_cache_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from training.distributed import dist_timeout
    from training.pretrain_data import WAIT_S

    monkeypatch.delenv("CXR_MSN_DIST_TIMEOUT_S", raising=False)
    assert dist_timeout() >= timedelta(seconds=WAIT_S)
    monkeypatch.setenv("CXR_MSN_DIST_TIMEOUT_S", "600")
    assert dist_timeout() == timedelta(minutes=10)


def test_shutdown_destroys_the_process_group_once() -> None:
    import torch.distributed as dist

    from training.distributed import shutdown

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    shutdown()
    assert not dist.is_initialized()
    shutdown()  # idempotent (atexit may call it after an explicit call)


# -- uint8 views: the loader ships grey crops, the step normalises them on the device --------


def _uint8_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    out = dict(batch)
    for name in ("target", "rand", "focal"):
        shape = (*batch[name].shape[:-3], 1, *batch[name].shape[-2:])
        out[name] = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return out


def test_uint8_views_are_the_same_crops_within_a_grey_level() -> None:
    import numpy as np

    from cxrmsn.preprocess import DEFAULT_PREPROCESS
    from training.config import ViewsConfig
    from training.msn.views import MultiViewTransform, to_model_input

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 200)
    smooth = np.outer(np.sin(ramp * 7), np.cos(ramp * 5)) * 0.5 + 0.5 + rng.normal(0, 0.05, (200, 200))
    image = (np.clip(smooth, 0, 1) * 255).astype(np.uint8)
    config = ViewsConfig(target_size=64, rand_size=64, focal_size=32, focal_views=3)
    floats = MultiViewTransform(config)(image, torch.Generator().manual_seed(1))
    grey = MultiViewTransform(config, uint8=True)(image, torch.Generator().manual_seed(1))
    for name in ("target", "rand", "focal"):
        shipped = getattr(grey, name)
        assert shipped.dtype == torch.uint8 and shipped.shape[-3] == 1
        normalised = to_model_input(shipped)
        assert normalised.shape == getattr(floats, name).shape
        levels = (normalised - getattr(floats, name)).abs().amax() * min(DEFAULT_PREPROCESS.std) * 255
        assert float(levels) <= 1.1, name  # rounding to uint8 after the resize, nothing more
    assert sum(getattr(grey, n).numel() for n in ("target", "rand", "focal")) * 12 == sum(
        getattr(floats, n).numel() * 4 for n in ("target", "rand", "focal")
    )


def test_a_uint8_batch_trains_like_its_normalised_float_batch_without_syncing() -> None:
    from training.msn.views import to_model_input
    from training.train_step import device_batch

    parts, batch = _parts()
    grey = _uint8_batch(batch)
    moved = device_batch(grey, torch.device("cpu"))
    for name in ("target", "rand", "focal"):
        assert moved[name].dtype == torch.float32 and moved[name].shape == batch[name].shape
        assert torch.equal(moved[name], to_model_input(grey[name]))
    run_step(parts, grey, step=0)
    counter = SyncCounter({id(state["step"]) for state in parts.optimizer.state.values()})
    with counter:
        stats = run_step(parts, grey, step=1)
    assert counter.calls == []

    torch.manual_seed(5)
    from_grey = _parts()[0]
    torch.manual_seed(5)
    loss_grey = run_step(from_grey, grey, step=0).read()["loss"]
    from_float = _parts()[0]
    torch.manual_seed(5)
    floats = {k: to_model_input(v) for k, v in grey.items()}
    assert run_step(from_float, floats, step=0).read()["loss"] == pytest.approx(loss_grey, rel=1e-6)
    assert stats.read()["loss"] > 0


def test_loader_settings_keep_workers_and_prefetch(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from training.pretrain_data import PREFETCH_FACTOR, cores_per_rank, default_workers, loader_settings

    cuda = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
    assert loader_settings(0, CPU) == {"num_workers": 0, "pin_memory": False}
    settings = loader_settings(6, cuda)
    assert settings == {
        "num_workers": 6,
        "pin_memory": True,
        "persistent_workers": True,
        "prefetch_factor": PREFETCH_FACTOR,
    }
    DataLoader(TensorDataset(torch.arange(4)), batch_size=2, **loader_settings(1, CPU))  # keywords ok
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert cores_per_rank(4) == 4 and default_workers(4) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert cores_per_rank() == 2 and default_workers() == 1
    assert default_workers(32) == 1  # never below one worker


def test_epoch_sums_add_without_syncing() -> None:
    parts, batch = _parts()
    steps = [run_step(parts, batch, step=i) for i in range(2)]
    sums = EpochSums(("loss", "agreement", "lr", "momentum"), torch.device("cpu"))
    counter = SyncCounter()
    created: list[str] = []

    class Creation(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in (torch.tensor, torch.as_tensor):  # a host value copied to the device
                created.append(func.__name__)
            return func(*args, **(kwargs or {}))

    with counter, Creation():
        for stats in steps:
            sums.add(stats)
    assert counter.calls == [] and created == []
    assert sums.means()["lr"] == pytest.approx(sum(s.read()["lr"] for s in steps) / 2)
