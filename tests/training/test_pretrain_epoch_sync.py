"""A pretraining epoch reads its statistics from the device once per logged step and once at
its end (issue 18), and logs the numbers the per-step reads of the old loop logged.

Syncs are counted as in test_train_step_sync.py (the operations that force one on CUDA,
caught by a torch function mode); the old loop (``train_step`` every step, float sums) is
kept here as the reference for the logged numbers.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.training.pretrain_fixtures import CPU, STEP_SMALL
from tests.training.test_train_step_sync import SyncCounter
from training.benchmark import synthetic_batch
from training.config import PretrainConfig, apply_overrides
from training.early_stopping import EarlyStopping
from training.pretrain import METHOD_STATS, RunState, epoch_seed, run_epoch
from training.train_step import StepStats, TrainParts, build_parts, run_step, train_step

STEPS = 8


class Rows:
    """Stands in for a CsvLog."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))


class Scalars:
    """Stands in for TensorBoard's SummaryWriter."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass


class Sampler:
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def _logs() -> dict[str, Any]:
    return {"steps": Rows(), "epochs": Rows(), "tensorboard": Scalars()}


def _setup(log_every: int, *overrides: str) -> tuple[TrainParts, list[dict[str, torch.Tensor]]]:
    config = apply_overrides(
        PretrainConfig(),
        [
            *STEP_SMALL,
            "train.batch_size=4",
            "train.progress=false",
            f"train.log_every={log_every}",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    parts = build_parts(config, ehr_dim=3, steps_per_epoch=STEPS, dist_info=CPU)
    generator_state = torch.get_rng_state()
    torch.manual_seed(1)
    batches = [synthetic_batch(config, 4, 3) for _ in range(STEPS)]
    torch.set_rng_state(generator_state)
    return parts, batches


def _old_epoch(
    parts: TrainParts, batches: list[dict[str, torch.Tensor]], state: RunState
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The loop before issue 18: every step read back at once, sums of floats."""
    config, epoch = parts.config, state.epoch
    torch.manual_seed(epoch_seed(config.train.seed, epoch, 0))
    parts.model.train()
    names = METHOD_STATS[config.method]
    sums = [0.0] * (len(names) + 1)
    rows = []
    for index, batch in enumerate(batches):
        step = epoch * STEPS + index
        stats = train_step(parts, batch, step)
        for i, name in enumerate(names):
            sums[i] += stats[name]
        sums[-1] += 1
        if step % config.train.log_every == 0 or index == STEPS - 1:
            rows.append({"epoch": epoch + 1, "step": step, **stats})
    totals = torch.tensor(sums, dtype=torch.float64)
    means = dict(zip(names, (totals[:-1] / totals[-1]).tolist(), strict=True))
    state.epoch += 1
    return rows, means


def test_an_epoch_reads_once_per_logged_step_and_logs_the_old_loops_numbers() -> None:
    log_every = 3
    parts, batches = _setup(log_every)
    old_parts, _ = _setup(log_every)
    logs = _logs()
    state = RunState(stopping=EarlyStopping(5, 1e-5))
    old_state = RunState()
    # epoch 0 outside the count: AdamW creates its state (and step counters) on the first step
    run_epoch(parts, batches, Sampler(), state, logs, CPU, STEPS)  # type: ignore[arg-type]
    old_rows, old_means = _old_epoch(old_parts, batches, old_state)

    counter = SyncCounter({id(s["step"]) for s in parts.optimizer.state.values()})
    with counter:
        run_epoch(parts, batches, Sampler(), state, logs, CPU, STEPS)  # type: ignore[arg-type]
    more_rows, more_means = _old_epoch(old_parts, batches, old_state)

    # epoch 1 logs steps 9, 12, 15 (every 3rd global step) and its last: 3 reads + the sums' one
    logged = [row["step"] for row in logs["steps"].rows if row["epoch"] == 2]
    assert logged == [9, 12, 15]
    assert counter.calls == ["tolist"] * (len(logged) + 1)
    assert len(counter.calls) <= math.ceil(STEPS / log_every) + 1

    # the same rows, value for value, as the old loop's per-step reads
    assert logs["steps"].rows == old_rows + more_rows
    for record, means in zip(state.history, (old_means, more_means), strict=True):
        assert {name: record[name] for name in means} == means
        assert record["steps"] == STEPS and record["images"] == STEPS * 4
        assert isinstance(record["lr"], float) and isinstance(record["momentum"], float)
    assert logs["epochs"].rows == state.history
    tags = {tag for tag, _, _ in logs["tensorboard"].scalars}
    assert {"step/loss", "step/agreement", "epoch/loss", "epoch/target_max"} <= tags
    # the networks trained identically
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            parts.anchor.state_dict().values(), old_parts.anchor.state_dict().values(), strict=True
        )
    )


def test_a_non_finite_loss_stops_the_epoch_at_the_next_read_naming_its_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts, batches = _setup(4)
    batches[2] = dict(batches[2], target=torch.full_like(batches[2]["target"], float("nan")))
    logs = _logs()
    state = RunState()
    done: list[int] = []

    def counting_step(parts: TrainParts, batch: dict[str, torch.Tensor], step: int) -> StepStats:
        done.append(step)
        return run_step(parts, batch, step)

    monkeypatch.setattr("training.pretrain.run_step", counting_step)
    with pytest.raises(FloatingPointError, match=r"the loss is nan at step 2$"):
        run_epoch(parts, batches, Sampler(), state, logs, CPU, STEPS)  # type: ignore[arg-type]
    assert done == [0, 1, 2, 3, 4]  # raised at the read of step 4, the first logged step after it
    assert [row["step"] for row in logs["steps"].rows] == [0]  # nothing logged from a bad step on
    assert state.epoch == 0 and state.history == []  # the epoch is not recorded (nor saved)


def test_a_non_finite_loss_between_reads_is_caught_by_the_epoch_sums() -> None:
    parts, batches = _setup(100)  # only step 0 and the last step are read
    batches[5] = dict(batches[5], target=torch.full_like(batches[5]["target"], float("nan")))
    with pytest.raises(FloatingPointError, match="step 5"):
        run_epoch(parts, batches, Sampler(), RunState(), _logs(), CPU, STEPS)  # type: ignore[arg-type]


def _sums_worker(rank: int, world: int, port: int, out: str) -> None:
    import os
    from pathlib import Path

    import torch.distributed as dist

    from training.train_step import EpochSums

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results: dict[str, Any] = {}
    try:
        sums = EpochSums(("loss", "lr"), torch.device("cpu"))
        for step in range(3):  # rank r's losses: 10 r + step; lr a host float
            loss = torch.tensor(10.0 * rank + step)
            sums.add(StepStats(step, {"loss": loss, "lr": 0.5}, torch.isfinite(loss)))
        results["read"] = sums.read(
            StepStats(2, {"loss": torch.tensor(10.0 * rank + 2), "lr": 0.5}, torch.tensor(True))
        )
        results["means"] = sums.means()
        bad = torch.tensor(float("inf") if rank == 1 else 1.0)
        sums.add(StepStats(3, {"loss": bad, "lr": 0.5}, torch.isfinite(bad)))
        try:
            sums.means()
        except FloatingPointError as error:
            results["error"] = str(error)
    finally:
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.destroy_process_group()


def test_two_ranks_average_over_both_and_both_stop_when_one_sees_a_non_finite_loss(tmp_path: Any) -> None:
    import torch.multiprocessing as mp

    from serving.devserver import free_port

    mp.spawn(_sums_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank, result in enumerate(ranks):
        assert result["read"] == {"loss": 10.0 * rank + 2, "lr": 0.5}
        assert result["means"] == {"loss": (0 + 1 + 2 + 10 + 11 + 12) / 6, "lr": 0.5}
    assert ranks[1]["error"] == "the loss is inf at step 3"
    assert ranks[0]["error"] == "the loss was not finite on 1 other rank(s)"  # not left waiting
