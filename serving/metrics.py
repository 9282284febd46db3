"""The service's own Prometheus counters, exported on BentoML's /metrics.

Labels are input formats and error codes only: nothing from the upload's content.
The collectors are created once per process, on first use (in the worker, where BentoML
has set the Prometheus multiprocess directory), and shared by the service and the
middleware, so a request refused before it reaches the service is counted too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import Counter, Histogram


@dataclass(frozen=True)
class Collectors:
    requests: Counter
    errors: Counter
    model_latency: Histogram
    batch_size: Histogram


@functools.cache
def collectors() -> Collectors:
    return Collectors(
        requests=Counter("cxr_msn_images_total", "images decoded, by input format", labelnames=["format"]),
        errors=Counter("cxr_msn_errors_total", "requests refused or failed, by error code", ["code"]),
        model_latency=Histogram(
            "cxr_msn_model_latency_seconds",
            "model inference time per batch",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        ),
        batch_size=Histogram(
            "cxr_msn_batch_size", "images per inference batch", buckets=(1, 2, 4, 8, 16, 32)
        ),
    )


def count_error(code: str) -> None:
    """One request refused or failed with ``code`` (the middleware's refusals included)."""
    collectors().errors.labels(code=code).inc()


class ServiceMetrics:
    def __init__(self) -> None:
        shared = collectors()
        self.requests = shared.requests
        self.errors = shared.errors
        self.model_latency = shared.model_latency
        self.batch_size = shared.batch_size

    def count_request(self, fmt: str) -> None:
        self.requests.labels(format=fmt).inc()

    def count_error(self, code: str) -> None:
        count_error(code)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.model_latency.observe(seconds)
