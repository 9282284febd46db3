"""Adaptive micro-batching for the in-process backend.

Requests queue up while the model is busy; when it is free, everything waiting (up to
``max_batch_size``) runs as one batch. At low load a request runs alone and waits for
nothing; under load, batches grow by themselves. BentoML's own ``batchable`` APIs
would serialise every preprocessed tensor through its self-proxy, so this batcher
keeps tensors in memory instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

LOGGER = logging.getLogger(__name__)
#: One image's outputs: (probabilities, attention) and, from ``Predictor.infer_scored``, its
#: out-of-distribution score (None from a graph without one).
Result = tuple[Any, ...]
InferFn = Callable[[np.ndarray], Result]


class MicroBatcher:
    def __init__(self, infer: InferFn, *, max_batch_size: int = 8) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._infer = infer
        self.max_batch_size = max_batch_size
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[Result]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and metrics
        self.on_batch: Callable[[int, float], None] | None = None

    async def infer(self, model_input: np.ndarray) -> Result:
        """One preprocessed image [3, H, W] -> (probabilities [14], attention [gh, gw], ...): each
        of the batch's outputs at this image's index (an output that is None stays None)."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(self._queue))
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((model_input, future))
        return await future

    async def _run(self, queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[Result]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            while len(items) < self.max_batch_size and not queue.empty():
                items.append(queue.get_nowait())
            live = [(x, f) for x, f in items if not f.cancelled()]
            if not live:
                continue
            batch = np.stack([x for x, _ in live])
            started = loop.time()
            try:
                outputs = await loop.run_in_executor(self._executor, self._infer, batch)
            except Exception as error:  # a backend fault fails this batch, not the server
                LOGGER.exception("inference failed for a batch of %d", len(live))
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            self._record(len(live), loop.time() - started)
            for index, (_, future) in enumerate(live):
                if not future.done():
                    future.set_result(tuple(None if out is None else out[index] for out in outputs))

    def _record(self, size: int, seconds: float) -> None:
        self.batch_sizes = [*self.batch_sizes[-999:], size]
        if self.on_batch is not None:
            self.on_batch(size, seconds)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
