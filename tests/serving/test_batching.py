"""The micro-batcher: batches form under load, results go back to the right caller."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serving.batching import MicroBatcher


def slow_identity(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    time.sleep(0.05)
    return batch[:, 0, 0, :2].copy(), batch[:, 0].copy()


def test_concurrent_requests_are_batched_and_answered_in_order() -> None:
    batcher = MicroBatcher(slow_identity, max_batch_size=4)
    inputs = [np.full((1, 3, 3), index, dtype=np.float32) for index in range(10)]

    async def main() -> list[tuple[np.ndarray, np.ndarray]]:
        return await asyncio.gather(*(batcher.infer(x) for x in inputs))

    results = asyncio.run(main())
    batcher.close()
    for index, (first, second) in enumerate(results):
        assert np.all(first == index) and np.all(second == index)
    assert max(batcher.batch_sizes) == 4 and sum(batcher.batch_sizes) == 10
    assert len(batcher.batch_sizes) < 10


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on() -> None:
    calls = {"count": 0}

    def flaky(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls["count"] += 1
        if calls["count"] == 1:
            raise RuntimeError("backend down")
        return batch[:, 0, 0, :1], batch[:, 0]

    batcher = MicroBatcher(flaky, max_batch_size=2)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="backend down"):
            await batcher.infer(np.zeros((1, 2, 2), dtype=np.float32))
        first, _ = await batcher.infer(np.ones((1, 2, 2), dtype=np.float32))
        assert first.tolist() == [1.0]

    asyncio.run(main())
    batcher.close()


def test_invalid_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        MicroBatcher(slow_identity, max_batch_size=0)
