"""The metrics the service records, in a Prometheus registry of its own.

Each app owns its registry, so several apps (tests, workers) never share series;
GET /metrics (service/routers/metrics.py) renders it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Requests by model and outcome, queue and compute time, batch size, queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("glimpse_requests", "Inference requests by model and outcome",
                                ["model", "outcome"], registry=self.registry)
        self.queue_seconds = Histogram("glimpse_queue_seconds",
                                       "Time a request waited in its model's queue",
                                       ["model"], buckets=SECONDS, registry=self.registry)
        self.compute_seconds = Histogram("glimpse_compute_seconds", "Time to compute a batch",
                                         ["model"], buckets=SECONDS, registry=self.registry)
        self.batch_size = Histogram("glimpse_batch_size", "Requests per computed batch",
                                    ["model"], buckets=BATCH_SIZES, registry=self.registry)
        self.queue_depth = Gauge("glimpse_queue_depth", "Requests waiting in the queue",
                                 ["model"], registry=self.registry)

    def count_request(self, model: str, outcome: str) -> None:
        self.requests.labels(model=model, outcome=outcome).inc()

    def batch_done(self, model: str, size: int, queue_s: Sequence[float],
                   compute_s: float) -> None:
        for waited in queue_s:
            self.queue_seconds.labels(model=model).observe(waited)
        self.compute_seconds.labels(model=model).observe(compute_s)
        self.batch_size.labels(model=model).observe(size)

    def watch_queue(self, model: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(model=model).set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
