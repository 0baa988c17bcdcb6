"""Prometheus metrics of one server, each labelled with the model, family, backend and precision served."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SERVED = ("model", "family", "backend", "precision")


class Metrics:
    """The server's metrics in a registry of their own (several apps can live in one process)."""

    def __init__(self, info: dict[str, object]) -> None:
        self.registry = CollectorRegistry()
        self.served = {key: str(info[key]) for key in SERVED}
        r = self.registry
        self.requests = Counter(
            "clipserve_requests",
            "HTTP requests by route and status",
            ["route", "status", *SERVED],
            registry=r,
        )
        self.errors = Counter(
            "clipserve_request_errors",
            "HTTP 4xx/5xx answers by route, status and error",
            ["route", "status", "error", *SERVED],
            registry=r,
        )
        self.latency = Histogram(
            "clipserve_request_duration_seconds",
            "Request latency",
            ["route", *SERVED],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "clipserve_batch_size",
            "Items per model call",
            ["modality", *SERVED],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.items = Counter(
            "clipserve_items", "Items encoded, by modality", ["modality", *SERVED], registry=r
        )
        self.queue_depth = Gauge(
            "clipserve_queue_depth", "Items waiting for a batch", ["modality", *SERVED], registry=r
        )
        self.text_cache_lookups = Counter(
            "clipserve_text_cache_lookups",
            "Texts looked up in the text cache, by outcome (hit or miss)",
            ["outcome", *SERVED],
            registry=r,
        )
        info_gauge = Gauge(
            "clipserve_model_info",
            "What runs: model, backend, precision, device, providers",
            [*SERVED, "device", "providers", "dim"],
            registry=r,
        )
        info_gauge.labels(
            **self.served,
            device=str(info["device"]),
            providers=",".join(info.get("providers", []) or []),
            dim=str(info["dim"]),
        ).set(1)

    def request(self, route: str, status: int, seconds: float, error: str | None = None) -> None:
        self.requests.labels(route=route, status=str(status), **self.served).inc()
        self.latency.labels(route=route, **self.served).observe(seconds)
        if status >= 400:
            self.errors.labels(route=route, status=str(status), error=error or "", **self.served).inc()

    def batch(self, modality: str, size: int) -> None:
        self.batch_size.labels(modality=modality, **self.served).observe(size)
        self.items.labels(modality=modality, **self.served).inc(size)

    def text_cache(self, hits: int, misses: int) -> None:
        self.text_cache_lookups.labels(outcome="hit", **self.served).inc(hits)
        self.text_cache_lookups.labels(outcome="miss", **self.served).inc(misses)

    def watch_queue(self, modality: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(modality=modality, **self.served).set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
