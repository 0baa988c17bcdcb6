"""FastAPI routes: /encode, /rank, /v1/embeddings, /v1/models, /healthz, /readyz, /metrics, and
those of a served index and of the enabled compat APIs.

Routes read as plainly as the operations: parse the body into items, let the
:class:`~clipserve.server.service.EncodingService` embed them, shape the answer. Errors users can
cause become a 4xx in one place (``error_response``): ``{"error", "detail", "index"}``, or the
shape of the route's API (:mod:`clipserve.server.apis`).

Before a route runs, :class:`~clipserve.server.guard.RequestGuard` checks the API key and the
declared body size, and counts the body's bytes as they arrive; JSON bodies are bounded, then
parsed off the event loop (:class:`~clipserve.server.guard.OffLoopJSONRoute`).
"""

import dataclasses
import io
import itertools
import logging
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from clipserve.errors import ClipserveError, InvalidInput, echo
from clipserve.inputs import Item, openai_item
from clipserve.server import schemas
from clipserve.server.compat import compat_routers
from clipserve.server.guard import (
    DOCS_ASSETS,
    JSON_VALUES_PER_ITEM,
    OffLoopJSONRoute,
    RequestGuard,
    error_response,
)
from clipserve.server.metrics import Metrics
from clipserve.server.models import ModelPool, ServedModel
from clipserve.server.responses import json_response, openai_embeddings
from clipserve.settings import MODEL_WEIGHTS_SEPARATOR, ServerSettings
from clipserve.zoo import DEFAULT_MODEL, canonical_name

log = logging.getLogger(__name__)

NPY = "application/x-npy"
PLAYGROUND = Path(__file__).parent / "playground"


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
    bodies = schemas.request_models(settings.max_items)

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

    def items_of(inputs: list[schemas.Input]) -> list[Item]:
        return [x.item(i, settings.allow_url) for i, x in enumerate(inputs)]

    def chosen(request: Request, name: str | None) -> ServedModel:
        """The model the request names (or the default), recorded for the metrics and headers."""
        model = pool.find(name)
        request.scope.setdefault("state", {})["model"] = model
        return model

    @app.post("/encode", responses={200: {"model": schemas.EncodeResponse}})
    async def encode(body: bodies.encode, request: Request) -> Response:
        """Embed texts, images and audio, in order. ``Accept: application/x-npy`` returns a float32 .npy."""
        model = chosen(request, body.model)
        async with pool.use(model) as service:
            vectors, _ = await service.embed(items_of(body.inputs))
        if NPY in request.headers.get("accept", ""):
            buffer = io.BytesIO()
            np.save(buffer, vectors)
            headers = {"X-Clipserve-Model": model.name, "X-Clipserve-Dim": str(model.spec.dim)}
            return Response(buffer.getvalue(), media_type=NPY, headers=headers)
        return json_response({"model": model.name, "dim": model.spec.dim, "embeddings": vectors})

    @app.post("/rank", response_model=schemas.RankResponse)
    async def rank(body: bodies.rank, request: Request) -> schemas.RankResponse:
        """Candidates sorted by clip_score: softmax over them of logit_scale × cosine to the query."""
        model = chosen(request, body.model)
        try:  # an item's index counts the query first; the answer names candidates from 0
            items = items_of([body.query, *body.candidates])
            async with pool.use(model) as service:
                vectors, _ = await service.embed(items)
                order, scores, cosines = service.encoder.rank_vectors(
                    vectors[0], items[0].modality, vectors[1:], [item.modality for item in items[1:]]
                )
        except InvalidInput as exc:
            if exc.index == 0:
                raise InvalidInput(f"query: {exc.reason}") from exc
            raise InvalidInput(f"candidate: {exc.reason}", exc.index - 1) from exc
        matches = [schemas.RankedMatch(index=int(i), clip_score=scores[i], cosine=cosines[i]) for i in order]
        return schemas.RankResponse(model=model.name, matches=matches)

    @app.post("/v1/embeddings", responses={200: {"model": schemas.EmbeddingsResponse}})
    async def embeddings(body: bodies.embeddings, request: Request) -> Response:
        """OpenAI-compatible embeddings; an input that is an image or audio data URI is embedded as such."""
        model = chosen(request, body.model)
        if body.dimensions is not None and body.dimensions != model.spec.dim:
            raise InvalidInput(f"dimensions must be {model.spec.dim} for {model.name}, got {body.dimensions}")
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not inputs:
            raise InvalidInput("input is empty")
        async with pool.use(model) as service:
            vectors, tokens = await service.embed(
                [openai_item(i, text, settings.allow_url) for i, text in enumerate(inputs)]
            )
        return json_response(openai_embeddings(model.name, vectors, tokens, body.encoding_format))

    @app.get("/v1/models")
    async def models() -> dict:
        """The served models, in OpenAI's list shape (the default first), with what each is and runs."""
        return {
            "object": "list",
            "data": [
                {
                    "id": model.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "clipserve",
                    **model.describe(),
                }
                for model in pool.models.values()
            ],
        }

    if index is not None:
        from clipserve.server.search import search_router

        app.include_router(search_router(index, pool, settings))

    for router in compat_routers(pool, settings):
        app.include_router(router)

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive (no authentication)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict:
        """Ready to serve: the default model's description at the top level, every model's state in
        ``models`` (``unloaded`` ones load on their first request; no file system paths)."""
        return {
            "status": "ready",
            **pool.default.describe(),
            "models": {model.name: model.describe() for model in pool.models.values()},
            **({"index": index.info()} if index is not None else {}),
        }

    @app.get("/metrics")
    async def metrics_route() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if settings.playground:
        app.mount("/playground/static", StaticFiles(directory=PLAYGROUND), name="playground")

        @app.get("/", include_in_schema=False)
        @app.get("/playground", include_in_schema=False)
        async def playground() -> FileResponse:
            """The browser playground: a page of the package calling this API."""
            return FileResponse(PLAYGROUND / "index.html")

    return app


def open_index(settings: ServerSettings):
    """The index to serve (its directory must hold one)."""
    from clipserve.index import Index

    return Index.open(settings.index)


def serving_the_index(settings: ServerSettings, index) -> ServerSettings:
    """``settings`` with the index's model served: the default list becomes it; a list that names
    other models must name it too (the index's vectors are of its model only)."""
    names = [canonical_name(entry.partition(MODEL_WEIGHTS_SEPARATOR)[0]) for entry in settings.model]
    if index.model in names:
        return settings
    if settings.model == [DEFAULT_MODEL]:
        return dataclasses.replace(settings, model=[index.model])
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
