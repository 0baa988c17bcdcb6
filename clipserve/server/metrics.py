"""Prometheus metrics of one server; model-level ones labelled with the model, family, backend and
precision that served them (several models may be served by one server)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SERVED = ("model", "family", "backend", "precision")


class Metrics:
    """The server's metrics in a registry of their own (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "clipserve_requests",
            "HTTP requests by route, status and API (clipserve, openai or a compat API)",
            ["route", "status", "api", *SERVED],
            registry=r,
        )
        self.errors = Counter(
            "clipserve_request_errors",
            "HTTP 4xx/5xx answers by route, status, error and API",
            ["route", "status", "error", "api", *SERVED],
            registry=r,
        )
        self.latency = Histogram(
            "clipserve_request_duration_seconds",
            "Request latency",
            ["route", "api", *SERVED],
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
        self.info = Gauge(
            "clipserve_model_info",
            "What runs, while a model is loaded: model, backend (as asked, and as it runs: with auto, "
            "the one chosen), precision, device, providers, and the int8 scheme (u8s8 or u8u8; empty for "
            "other precisions)",
            [*SERVED, "running_backend", "device", "providers", "dim", "int8_scheme"],
            registry=r,
        )
        self.loaded = Gauge(
            "clipserve_model_loaded", "1 while the model is loaded, else 0", SERVED, registry=r
        )
        self.loads = Counter(
            "clipserve_model_loads",
            "Model loads by outcome: ok, failed, or refused (memory limit)",
            ["outcome", *SERVED],
            registry=r,
        )
        self.unloads = Counter(
            "clipserve_model_unloads",
            "Model unloads by reason: idle or memory",
            ["reason", *SERVED],
            registry=r,
        )
        self.memory = Gauge(
            "clipserve_model_memory_bytes",
            "Resident memory the model's last load added to the server",
            SERVED,
            registry=r,
        )

    def request(
        self, route: str, api: str, status: int, seconds: float, error: str | None, served: dict[str, str]
    ) -> None:
        self.requests.labels(route=route, status=str(status), api=api, **served).inc()
        self.latency.labels(route=route, api=api, **served).observe(seconds)
        if status >= 400:
            self.errors.labels(route=route, status=str(status), error=error or "", api=api, **served).inc()

    def for_model(self, served: dict[str, str]) -> ModelMetrics:
        """The metrics of one served model (``served``: its :data:`SERVED` labels)."""
        return ModelMetrics(self, served)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """One model's view of :class:`Metrics`: its labels filled in."""

    def __init__(self, metrics: Metrics, served: dict[str, str]) -> None:
        self.metrics, self.served = metrics, served
        self._info_labels: dict[str, str] | None = None
        self._watched: list[str] = []
        metrics.loaded.labels(**served).set(0)

    def batch(self, modality: str, size: int) -> None:
        self.metrics.batch_size.labels(modality=modality, **self.served).observe(size)
        self.metrics.items.labels(modality=modality, **self.served).inc(size)

    def text_cache(self, hits: int, misses: int) -> None:
        self.metrics.text_cache_lookups.labels(outcome="hit", **self.served).inc(hits)
        self.metrics.text_cache_lookups.labels(outcome="miss", **self.served).inc(misses)

    def watch_queue(self, modality: str, depth: Callable[[], int]) -> None:
        self.metrics.queue_depth.labels(modality=modality, **self.served).set_function(depth)
        self._watched.append(modality)

    def load(self, outcome: str, info: dict[str, object] | None = None, memory_bytes: int = 0) -> None:
        """A load ended with ``outcome``; when ``ok``, ``info`` says what now runs."""
        self.metrics.loads.labels(outcome=outcome, **self.served).inc()
        if outcome != "ok" or info is None:
            return
        self._info_labels = {
            **self.served,
            "running_backend": str(info["backend"]),
            "device": str(info["device"]),
            "providers": ",".join(info.get("providers", []) or []),
            "dim": str(info["dim"]),
            "int8_scheme": str(info.get("int8_scheme", "")),
        }
        self.metrics.info.labels(**self._info_labels).set(1)
        self.metrics.loaded.labels(**self.served).set(1)
        self.metrics.memory.labels(**self.served).set(memory_bytes)

    def unload(self, reason: str) -> None:
        """The model was unloaded: its info and queue gauges go, its loaded gauge reads 0."""
        self.metrics.unloads.labels(reason=reason, **self.served).inc()
        self.metrics.loaded.labels(**self.served).set(0)
        if self._info_labels is not None:
            self.metrics.info.remove(*self._info_labels.values())
            self._info_labels = None
        self.stop_watching()

    def stop_watching(self) -> None:
        """Drop the queue gauges (their functions hold the model's batchers, and so the model)."""
        for modality in self._watched:
            self.metrics.queue_depth.remove(modality, *self.served.values())
        self._watched.clear()
