"""The service's own Prometheus counters, exported on BentoML's /metrics.

Labels are input formats and error codes only: nothing from the upload's content.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram


class ServiceMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "cxr_msn_images_total", "images decoded, by input format", labelnames=["format"]
        )
        self.errors = Counter("cxr_msn_errors_total", "requests refused or failed, by error code", ["code"])
        self.model_latency = Histogram(
            "cxr_msn_model_latency_seconds",
            "model inference time per batch",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        )
        self.batch_size = Histogram(
            "cxr_msn_batch_size", "images per inference batch", buckets=(1, 2, 4, 8, 16, 32)
        )

    def count_request(self, fmt: str) -> None:
        self.requests.labels(format=fmt).inc()

    def count_error(self, code: str) -> None:
        self.errors.labels(code=code).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.model_latency.observe(seconds)
