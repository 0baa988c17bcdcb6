"""FastAPI routes: /encode, /rank, /v1/embeddings, /v1/models, /healthz, /readyz, /metrics.

Routes read as plainly as the operations: parse the body into items, let the
:class:`~clipserve.server.service.EncodingService` embed them, shape the answer. Errors users can
cause become ``{"error", "detail", "index"}`` with a 4xx status in one place (``_error_response``).

Before a route runs, :class:`RequestGuard` checks the API key, refuses bodies over the size limit
and work beyond the in-flight limit, all before a byte of the body is read; JSON bodies are then
parsed off the event loop (:class:`OffLoopJSONRoute`).
"""

import base64
import hmac
import io
import itertools
import logging
import re
import time
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from clipserve.encoder import clip_scores
from clipserve.errors import ClipserveError, InvalidInput, Overloaded, RequestTooLarge, Unauthorized, echo
from clipserve.inputs import Item, openai_item
from clipserve.server import schemas
from clipserve.server.metrics import Metrics
from clipserve.server.models import ModelPool, ServedModel
from clipserve.settings import ServerSettings

log = logging.getLogger(__name__)

NPY = "application/x-npy"
OPEN_PATHS = frozenset(
    {"/healthz", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/", "/playground"}
)
"""Paths without the API key: health, the API docs and the playground's page (which asks for the key)."""
DOCS_ASSETS = "/static-offline-docs"
PLAYGROUND = Path(__file__).parent / "playground"
OPEN_PREFIXES = (DOCS_ASSETS + "/", "/playground/static/")
PAGES = frozenset({"/", "/playground", "/docs", "/redoc"})
PAGE_POLICY = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)
"""The HTML pages may load nothing from elsewhere: ReDoc's bundle links a logo on its CDN."""
INLINE_JSON_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop (faster than a thread hop); larger ones off it."""
RETRY_AFTER_S = "1"
SERVED_BY_HEADER = b"x-clipserve-model"
"""On every answer of the app: the model that answered (and, behind a proxy, that the app did)."""
JSON_VALUES_PER_ITEM = 4
"""An item is an object with one key, and a comma: 3 structural characters; 4 leaves slack."""


def create_app(settings: ServerSettings) -> FastAPI:
    """The ASGI app for ``settings`` (models, limits, auth, batching); loads the default model (and,
    with ``preload``, every one) now, so a bad model or weights fails before the server binds."""
    settings.resolved_api_key()  # a missing or empty key file fails before any model loads
    metrics = Metrics()
    pool = ModelPool(settings, metrics)
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

    @app.exception_handler(ClipserveError)
    async def clipserve_error(request: Request, exc: ClipserveError) -> JSONResponse:
        return _error_response(
            request, exc.http_status, type(exc).__name__, str(exc), getattr(exc, "index", None)
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        name = (
            "RequestTooLarge"
            if exc.status_code == 413
            else HTTPStatus(exc.status_code).phrase.replace(" ", "")
        )
        return _error_response(request, exc.status_code, name, str(exc.detail), None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = next((e for e in errors if e["type"] == "too_long"), errors[0])  # a size limit outranks
        status, error, detail, index = describe_validation_error(first)
        return _error_response(request, status, error, detail, index)

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
        return _json({"model": model.name, "dim": model.spec.dim, "embeddings": vectors})

    @app.post("/rank", response_model=schemas.RankResponse)
    async def rank(body: bodies.rank, request: Request) -> schemas.RankResponse:
        """Candidates sorted by clip_score: softmax over them of logit_scale × cosine to the query."""
        model = chosen(request, body.model)
        try:  # an item's index counts the query first; the answer names candidates from 0
            items = items_of([body.query, *body.candidates])
            async with pool.use(model) as service:
                vectors, _ = await service.embed(items)
                scale = service.encoder.logit_scale
                scales = np.asarray([scale(items[0].modality, item.modality) for item in items[1:]])
        except InvalidInput as exc:
            if exc.index == 0:
                raise InvalidInput(f"query: {exc.reason}") from exc
            raise InvalidInput(f"candidate: {exc.reason}", exc.index - 1) from exc
        order, scores, cosines = clip_scores(vectors[0], vectors[1:], scales)
        matches = [schemas.Match(index=int(i), clip_score=scores[i], cosine=cosines[i]) for i in order]
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
        if body.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = list(vectors)
        return _json(
            {
                "object": "list",
                "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(data)],
                "model": model.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

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


JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
STRUCTURAL = (b"{", b"[", b",", b":")


def check_json_values(body: bytes, limit: int) -> None:
    """Refuse a body that would parse into more than about ``limit`` JSON values, before parsing it.

    Parsing materialises every value: 16 MB of ``{},{},…`` are 5 million dicts and ~1.4 GB. The
    structural characters outside strings bound the number of values; counting them costs little,
    and strings are only stripped (a regular expression) when the quick count over the whole body
    is already over the limit.
    """

    def count(data: bytes) -> int:
        return sum(data.count(c) for c in STRUCTURAL)

    if count(body) > limit and count(JSON_STRING.sub(b"", body)) > limit:
        # an HTTPException: FastAPI turns any other error raised while parsing a body into a 400
        raise HTTPException(
            413, f"the body holds more JSON values than {limit}, more than the item limit allows"
        )


def parse_json(body: bytes, limit: int):
    check_json_values(body, limit)
    return orjson.loads(body)


class OffLoopJSONRequest(Request):
    """Parses a large JSON body on a worker thread with orjson, so the event loop keeps serving,
    after a bound on the number of values it holds (``app.state.max_json_values``)."""

    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            limit = self.app.state.max_json_values
            self._json = (
                parse_json(body, limit)
                if len(body) <= INLINE_JSON_BYTES
                else await run_in_threadpool(parse_json, body, limit)
            )
        return self._json


class OffLoopJSONRoute(APIRoute):
    """A route whose JSON body is parsed by :class:`OffLoopJSONRequest`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(OffLoopJSONRequest(request.scope, request.receive))

        return route


def _json(content: dict) -> Response:
    """JSON with numpy arrays serialised natively (orjson): vectors are most of every answer."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _error_response(
    request: Request, status: int, error: str, detail: str, index: int | None
) -> JSONResponse:
    """``{"error", "detail", "index"}``; on the OpenAI routes (``/v1/...``) OpenAI's error shape."""
    return error_response(
        request.url.path, request.scope.setdefault("state", {}), status, error, detail, index
    )


def error_response(
    path: str, state: dict, status: int, error: str, detail: str, index: int | None
) -> JSONResponse:
    """The error answer (shared with :class:`RequestGuard`, which answers before routing)."""
    state["error"] = error
    detail = echo(detail, 2000)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == Overloaded.http_status:
        headers["Retry-After"] = RETRY_AFTER_S
    if path.startswith("/v1/"):
        body = {"error": {"message": detail, "type": error, "param": None, "code": index}}
    else:
        body = {"error": error, "detail": detail, "index": index}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTPExceptions through its body parsing."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit}-byte limit")


class RequestGuard:
    """ASGI middleware, before any route: API key, body size, in-flight bytes; and the metrics."""

    def __init__(self, app, settings: ServerSettings, metrics: Metrics, default: ServedModel) -> None:
        self.app, self.metrics, self.default = app, metrics, default
        api_key = settings.resolved_api_key()
        self.api_key = api_key.encode() if api_key is not None else None
        self.max_bytes = settings.max_body_bytes
        self.max_inflight = settings.max_inflight_bytes
        self.inflight = 0

    def admit(self, scope) -> int:
        """The body bytes the request reserves; raises why it is refused before its body is read."""
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.api_key is not None and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.api_key):
                raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
        if b"content-length" in headers:
            reserve = int(headers[b"content-length"])  # the HTTP server has checked it is a number
            if reserve > self.max_bytes:
                raise RequestTooLarge(BodyTooLarge(self.max_bytes).detail)
        else:  # streamed: it may grow to the limit
            reserve = 0 if scope["method"] in ("GET", "HEAD") else self.max_bytes
        if self.inflight and self.inflight + reserve > self.max_inflight:  # one request always fits
            raise Overloaded(f"{self.inflight} request bytes are being handled; retry later")
        return reserve

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        state = scope.setdefault("state", {})
        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                model = state.get("model", self.default)
                added = [(SERVED_BY_HEADER, model.name.encode())]
                if scope["path"] in PAGES:
                    added.append((b"content-security-policy", PAGE_POLICY))
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        reserved = 0
        try:
            try:
                reserved = self.admit(scope)
            except ClipserveError as error:
                answer = error_response(
                    scope["path"], state, error.http_status, type(error).__name__, str(error), None
                )
                await answer(scope, receive, recording_send)
                return
            self.inflight += reserved
            await self.app(scope, capped_receive, recording_send)
        finally:
            self.inflight -= reserved
            route = getattr(scope.get("route"), "path", "unmatched")
            model = state.get("model", self.default)
            self.metrics.request(
                route, status, time.perf_counter() - start, state.get("error"), model.metrics.served
            )
