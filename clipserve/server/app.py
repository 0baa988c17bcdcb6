"""The FastAPI app: its middleware, its error answers, and its routers, one by API (clipserve's
own in :mod:`~clipserve.server.native`, OpenAI's in :mod:`~clipserve.server.openai_api`, the
operators' in :mod:`~clipserve.server.ops`, a served index's in :mod:`~clipserve.server.search`,
the compat APIs' in :mod:`~clipserve.server.compat`).

Routes read as plainly as the operations: parse the body into items, let the
:class:`~clipserve.server.service.EncodingService` embed them, shape the answer. Errors users can
cause become a 4xx in one place (``error_response``): ``{"error", "detail", "index"}``, or the
shape of the route's API (:mod:`clipserve.server.apis`).

Before a route runs, :class:`~clipserve.server.guard.RequestGuard` checks the API key and the
declared body size, and counts the body's bytes as they arrive; JSON bodies are bounded, then
parsed off the event loop (:class:`~clipserve.server.guard.OffLoopJSONRoute`).
"""

import dataclasses
import itertools
import logging
from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from clipserve.errors import ClipserveError, echo
from clipserve.server import native, openai_api, ops
from clipserve.server.compat import compat_routers
from clipserve.server.guard import (
    DOCS_ASSETS,
    JSON_VALUES_PER_ITEM,
    OffLoopJSONRoute,
    RequestGuard,
    error_response,
)
from clipserve.server.metrics import Metrics
from clipserve.server.models import ModelPool
from clipserve.server.ops import PLAYGROUND
from clipserve.settings import MODEL_WEIGHTS_SEPARATOR, ServerSettings
from clipserve.zoo import DEFAULT_MODEL, canonical_name

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings, load: bool = True) -> FastAPI:
    """The ASGI app for ``settings`` (models, limits, auth, batching); loads the default model (and,
    with ``preload``, every one) now, so a bad model or weights fails before the server binds.
    ``load=False`` loads nothing (the routes alone: the documentation's API reference)."""
    settings.resolved_api_key()  # a missing or empty key file fails before any model loads
    index = open_index(settings) if settings.index else None
    if index is not None:
        settings = serving_the_index(settings, index)
    metrics = Metrics()
    pool = ModelPool(settings, metrics)
    if load:
        pool.load_at_start()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.start()
        yield
        await pool.close()

    app = FastAPIOffline(  # Swagger UI and ReDoc from the package's assets: no CDN, works offline
        title="clipserve",
        summary="CLIP embeddings for texts, images and audio in one latent space",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
    )
    app.router.route_class = OffLoopJSONRoute
    app.state.models = pool
    app.state.max_json_values = JSON_VALUES_PER_ITEM * settings.max_items + 64
    app.add_middleware(RequestGuard, settings=settings, metrics=metrics, default=pool.default)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(ClipserveError)
    async def clipserve_error(request: Request, exc: ClipserveError) -> JSONResponse:
        return error_response(
            request.scope,
            exc.http_status,
            type(exc).__name__,
            str(exc),
            getattr(exc, "index", None),
            getattr(exc, "retry_after_s", None),
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        name = getattr(exc, "error", None) or (
            "RequestTooLarge"
            if exc.status_code == 413
            else HTTPStatus(exc.status_code).phrase.replace(" ", "")
        )
        return error_response(request.scope, exc.status_code, name, str(exc.detail), None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = next((e for e in errors if e["type"] == "too_long"), errors[0])  # a size limit outranks
        status, error, detail, index = describe_validation_error(first)
        return error_response(request.scope, status, error, detail, index)

    app.include_router(native.router(pool, settings))
    app.include_router(openai_api.router(pool, settings))
    if index is not None:
        from clipserve.server.search import search_router

        app.include_router(search_router(index, pool, settings))

    for router in compat_routers(pool, settings):
        app.include_router(router)
    app.include_router(ops.router(pool, metrics, index, settings.playground))

    if settings.playground:
        app.mount("/playground/static", StaticFiles(directory=PLAYGROUND), name="playground")
    return app


def open_index(settings: ServerSettings):
    """The index to serve (its directory must hold one)."""
    from clipserve.index import Index

    return Index.open(settings.index)


def serving_the_index(settings: ServerSettings, index) -> ServerSettings:
    """``settings`` with the index's model served: the default list becomes it when it is a zoo
    name (an index is data: it never chooses a model file or repository to load); a list that
    names other models must name it too (the index's vectors are of its model only)."""
    entries = [entry.partition(MODEL_WEIGHTS_SEPARATOR)[0] for entry in settings.model]
    if index.model in entries or index.model in [canonical_name(entry) for entry in entries]:
        return settings
    if settings.model == [DEFAULT_MODEL]:
        return dataclasses.replace(settings, model=[index.zoo_model()])
    raise ValueError(
        f"the index {settings.index} holds vectors of {index.model}: serve that model too "
        f"(--model {index.model})"
    )


def describe_validation_error(first: dict) -> tuple[int, str, str, int | None]:
    """``(status, error, detail, index)`` of pydantic's first error: the item index is the number
    that follows a list field in the location, never a byte offset."""
    if first["type"] == "json_invalid":
        position = first["loc"][-1]
        return 422, "InvalidRequest", f"malformed JSON at byte {position}: {first['ctx']['error']}", None
    loc = [part for part in first["loc"] if part != "body"]
    where = ".".join(str(part) for part in loc) or "body"
    if first["type"] == "too_long":
        ctx = first.get("ctx", {})
        return (
            413,
            "RequestTooLarge",
            f"{where} holds {ctx.get('actual_length')} items; the limit is {ctx.get('max_length')}",
            None,
        )
    index = next(
        (
            part
            for before, part in itertools.pairwise(loc)
            if isinstance(part, int) and isinstance(before, str)
        ),
        None,
    )
    return 422, "InvalidRequest", f"{where}: {echo(first['msg'], 300)}", index
