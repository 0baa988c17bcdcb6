"""The models of one server: chosen per request, loaded at start or on first use, unloaded when
idle, and kept within a memory bound.

Each loaded model is an :class:`~clipserve.server.service.EncodingService` of its own (its
batchers, threads and metrics labels). Loads run one at a time on a thread of their own, so the
event loop keeps serving the loaded models meanwhile; requests arriving for a model being loaded
wait for that one load.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from enum import StrEnum

import numpy as np

from clipserve.encoder import Encoder
from clipserve.errors import ClipserveError, ModelUnavailable, UnknownModel, echo
from clipserve.families import resolve_model
from clipserve.families.choice import settled
from clipserve.resources import release_freed_memory, resident_bytes
from clipserve.server.metrics import Metrics, ModelMetrics
from clipserve.server.service import EncodingService
from clipserve.settings import EngineSettings, ServerSettings
from clipserve.zoo import ModelSpec, canonical_name

log = logging.getLogger(__name__)

GIB = 1024**3
LONGEST_IDLE_CHECK_S = 5.0
LOAD_RETRY_S = (5.0, 300.0)
"""After a failed load the next is tried this many seconds later, doubling from the first value after
each further failure, up to the second: a broken model costs a load now and then, not one per request."""


class ModelState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ServedModel:
    """One model of the server and its lifecycle."""

    def __init__(self, settings: EngineSettings, spec: ModelSpec, metrics: ModelMetrics) -> None:
        self.settings, self.spec, self.metrics = settings, spec, metrics
        self.service: EncodingService | None = None
        self.state = ModelState.UNLOADED
        self.users = 0
        """Requests using or waiting for the model: it is never unloaded under them."""
        self.last_used = time.monotonic()
        self.memory_bytes: int | None = None
        """Resident memory its last load added to the server."""
        self.error: str | None = None
        """Why the last load failed, for clients: the kind of error only (the log has the rest)."""
        self.failures = 0
        self.retry_at = 0.0
        """After a failed load: when the next may start."""
        self.loaded_at = 0.0
        self.modalities: tuple[str, ...] = ()
        self.info: dict[str, object] = {
            "model": spec.name,
            "dim": spec.dim,
            "licence": spec.licence,
            "family": spec.family,
            "backend": settings.backend,
            "device": settings.device,
            "precision": settings.precision,
        }
        """What runs (as :meth:`Encoder.info`, without paths); before a first load, what was asked."""
        self.lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict[str, object]:
        """State, memory and what runs, for ``/readyz`` and ``/v1/models``."""
        memory = None if self.memory_bytes is None else round(self.memory_bytes / 2**20, 1)
        return {
            **self.info,
            "state": str(self.state),
            "modalities": list(self.modalities),
            "memory_mib": memory,
            "idle_s": round(time.monotonic() - self.last_used, 1) if self.users == 0 else 0.0,
            **({"error": self.error, "retry_in_s": self.retry_in()} if self.error else {}),
        }

    def retry_in(self) -> float:
        """Seconds until a failed model's next load may start (0 when it may now)."""
        return round(max(0.0, self.retry_at - time.monotonic()), 1)

    def unavailable(self) -> ModelUnavailable:
        """What a request gets while the model's last load failed: no paths, no details."""
        wait = self.retry_in()
        return ModelUnavailable(
            f"model {self.name} failed to load ({self.error}); the server's log says why; "
            f"next attempt in {wait:g} s",
            retry_after_s=max(1.0, wait),
        )


def served_labels(spec: ModelSpec, settings: EngineSettings) -> dict[str, str]:
    """The metrics labels of a served model (known before it loads)."""
    return {
        "model": spec.name,
        "family": spec.family,
        "backend": settings.backend,
        "precision": settings.precision,
    }


class ModelPool:
    """The served models by name, the first being the default."""

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.models: dict[str, ServedModel] = {}
        for engine in settings.engines():
            spec, engine = resolve_model(engine)  # an unknown name fails at start, with close names
            if spec.name in self.models:
                raise ValueError(f"{spec.name} is listed twice in the served models")
            labels = served_labels(spec, settled(engine))  # auto: named when the rules leave one
            self.models[spec.name] = ServedModel(engine, spec, metrics.for_model(labels))
        self.default = next(iter(self.models.values()))
        self.max_bytes = None if settings.max_memory_gb is None else int(settings.max_memory_gb * GIB)
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="clipserve-load")
        self._reaper: asyncio.Task | None = None

    # -- choosing -------------------------------------------------------------------------------

    def find(self, requested: str | None) -> ServedModel:
        """The model a request names (any alias of a served zoo entry), or the default."""
        if requested is None:
            return self.default
        name = canonical_name(requested) or requested
        if name not in self.models:
            raise UnknownModel(
                f"model {echo(requested)!r} is not served here; this server serves {', '.join(self.models)}"
            )
        return self.models[name]

    def chosen(self, scope: dict, requested: str | None) -> ServedModel:
        """:meth:`find`, recorded in the request's ``scope`` for its metrics and headers."""
        model = self.find(requested)
        scope.setdefault("state", {})["model"] = model
        return model

    async def embed(self, scope: dict, model: ServedModel, items: list) -> tuple[np.ndarray, list[int]]:
        """``items`` embedded by ``model`` (recorded in the request's ``scope`` for its metrics and
        headers), and their tokens: what every route that embeds calls."""
        scope.setdefault("state", {})["model"] = model
        async with self.use(model) as service:
            return await service.embed(items)

    @asynccontextmanager
    async def use(self, model: ServedModel) -> AsyncIterator[EncodingService]:
        """The model's service, loaded first if it is not (concurrent first requests share one load)."""
        model.users += 1
        try:
            if model.state is not ModelState.READY:
                async with model.lock:
                    if model.state is not ModelState.READY:
                        await self._load(model)
            yield model.service
        finally:
            model.users -= 1
            model.last_used = time.monotonic()

    # -- lifecycle (every state change happens on the event loop, or before serving) -------------

    def load_at_start(self) -> None:
        """Load the default model, or every one with ``preload``; a failure stops the server's start."""
        for model in self.models.values():
            if model is self.default or self.settings.preload:
                try:
                    built = self._build(model)
                except ClipserveError:
                    raise  # the operator's console: the whole message, paths included
                except Exception as exc:
                    raise ModelUnavailable(f"model {model.name} could not be loaded: {exc}") from exc
                self._attach(model, *built)
                if self._over(0):
                    raise self._refusal(model, 0)

    def start(self) -> None:
        """Start unloading idle models (with ``model_ttl``); call on the serving event loop."""
        ttl = self.settings.model_ttl
        if ttl > 0:
            self._reaper = asyncio.get_running_loop().create_task(self._unload_idle(ttl))

    async def close(self) -> None:
        """Stop the reaper and every loaded model, and give their memory back (the app object may
        outlive the server: web frameworks cache its route functions)."""
        if self._reaper is not None:
            self._reaper.cancel()
        for model in self.models.values():
            if model.service is not None:
                service, model.service = model.service, None
                model.state = ModelState.UNLOADED
                model.metrics.stop_watching()
                await self._dispose(service)
        self._loader.shutdown(wait=True)

    async def _load(self, model: ServedModel) -> None:
        if model.state is ModelState.FAILED and model.retry_in() > 0:
            raise model.unavailable()
        await self._make_room(model, model.memory_bytes or 0)
        model.state = ModelState.LOADING
        try:
            built = await asyncio.get_running_loop().run_in_executor(self._loader, self._build, model)
        except Exception:
            raise model.unavailable() from None
        self._attach(model, *built)
        if self._over(0):
            try:
                await self._make_room(model, 0)
            except ModelUnavailable as cause:
                await self._dispose(self._detach(model, "memory"))
                raise ModelUnavailable(
                    f"loading {model.name} (+{model.memory_bytes / GIB:.2f} GiB) took the server over "
                    f"max_memory_gb={self.settings.max_memory_gb}; it was unloaded again: {cause}",
                    cause.retry_after_s,
                ) from None

    def _build(self, model: ServedModel) -> tuple[Encoder, int]:
        """The model's encoder and the resident memory its load added (on the loader thread). A
        failure is logged whole and remembered by its kind only, with the time of the next try."""
        before = resident_bytes()
        started = time.perf_counter()
        try:
            # Idle inference threads must not spin: request handling needs those cycles.
            encoder = Encoder(settings=model.settings, spin=False)
        except Exception as exc:
            first, most = LOAD_RETRY_S
            model.failures += 1
            model.retry_at = time.monotonic() + min(most, first * 2 ** (model.failures - 1))
            model.state, model.error = ModelState.FAILED, type(exc).__name__
            model.metrics.load("failed")
            log.error("loading %s failed (next attempt in %.0f s): %s", model.name, model.retry_in(), exc)
            raise
        memory = max(0, resident_bytes() - before)
        log.info("loaded %s in %.1f s (+%.0f MiB)", model.name, time.perf_counter() - started, memory / 2**20)
        return encoder, memory

    def _attach(self, model: ServedModel, encoder: Encoder, memory: int) -> None:
        model.service = EncodingService(encoder, self.settings, model.metrics)
        model.memory_bytes = memory
        model.info = {k: v for k, v in encoder.info().items() if k != "weights"}
        model.modalities = encoder.modalities
        model.state, model.error, model.failures = ModelState.READY, None, 0
        model.last_used = model.loaded_at = time.monotonic()
        model.metrics.load("ok", encoder.info(), memory)
        log.info("serving %s", model.info)

    def _detach(self, model: ServedModel, reason: str) -> EncodingService:
        service, model.service = model.service, None
        model.state = ModelState.UNLOADED
        model.metrics.unload(reason)
        return service

    async def _dispose(self, service: EncodingService) -> None:
        """Close an unloaded model's service and give its memory back to the system."""
        await service.close()
        del service
        await asyncio.sleep(0)  # the done-callbacks of its cancelled batcher tasks still hold them
        gc.collect()  # the service's batchers and threads hold references in cycles
        release_freed_memory()
        log.info("the server now holds %.0f MiB", resident_bytes() / 2**20)

    def _over(self, need: int) -> bool:
        return self.max_bytes is not None and resident_bytes() + need > self.max_bytes

    def _refusal(self, model: ServedModel, need: int) -> ModelUnavailable:
        model.metrics.load("refused")
        loaded = [m.name for m in self.models.values() if m.state is ModelState.READY and m is not model]
        return ModelUnavailable(
            f"loading {model.name} (about {need / GIB:.2f} GiB) would pass max_memory_gb="
            f"{self.settings.max_memory_gb}: the server holds {resident_bytes() / GIB:.2f} GiB with "
            f"{', '.join(loaded) or 'no other model'} loaded"
            + (" and in use" if self.settings.memory_policy == "evict" and loaded else "")
        )

    async def _make_room(self, model: ServedModel, need: int) -> None:
        """Check that ``need`` more bytes fit the memory bound, evicting idle models if allowed
        (those loaded at least ``min_residency_s`` ago)."""
        while self._over(need):
            now = time.monotonic()
            idle = [
                m
                for m in self.models.values()
                if m is not model and m.state is ModelState.READY and m.users == 0
            ]
            if self.settings.memory_policy != "evict" or not idle:
                raise self._refusal(model, need)
            residency = self.settings.min_residency_s
            settled = [m for m in idle if now - m.loaded_at >= residency]
            if not settled:
                wait = min(residency - (now - m.loaded_at) for m in idle)
                model.metrics.load("refused")
                raise ModelUnavailable(
                    f"loading {model.name} needs an idle model evicted, and those loaded less than "
                    f"min_residency_s={residency:g} ago stay; retry in {wait:.0f} s",
                    retry_after_s=max(1.0, wait),
                )
            await self._dispose(self._detach(min(settled, key=lambda m: m.last_used), "memory"))

    async def _unload_idle(self, ttl: float) -> None:
        period = min(max(ttl / 4, 0.05), LONGEST_IDLE_CHECK_S)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for model in self.models.values():
                idle = model.state is ModelState.READY and model.users == 0 and not model.lock.locked()
                if idle and now - model.last_used >= ttl:
                    log.info("%s idle for %.0f s", model.name, now - model.last_used)
                    try:
                        await self._dispose(self._detach(model, "idle"))
                    except Exception:  # the reaper must outlive one bad unload
                        log.exception("unloading %s failed", model.name)
