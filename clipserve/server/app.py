"""FastAPI routes: /encode, /rank, /v1/embeddings, /v1/models, /healthz, /readyz, /metrics.

Routes read as plainly as the operations: parse the body into items, let the
:class:`~clipserve.server.service.EncodingService` embed them, shape the answer. Errors users can
cause become ``{"error", "detail", "index"}`` with a 4xx status in one place (``_error_response``).
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import time
from contextlib import asynccontextmanager
from http import HTTPStatus

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from clipserve.batching import QueueFull
from clipserve.encoder import Encoder, clip_scores
from clipserve.errors import ClipserveError, InvalidInput, RequestTooLarge, Unauthorized, UnknownModel
from clipserve.inputs import Item
from clipserve.server import schemas
from clipserve.server.service import EncodingService
from clipserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

NPY = "application/x-npy"
OPEN_PATHS = frozenset({"/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})


def build_encoder(settings: ServerSettings) -> Encoder:
    """The :class:`Encoder` that ``settings`` describe (model, backend, weights, input limits)."""
    return Encoder(
        settings.model,
        backend=settings.backend,
        device=settings.device,
        weights=settings.weights,
        precision=settings.precision,
        batch_size=settings.max_batch_size,
        num_workers=settings.num_workers,
        cache_dir=settings.cache_dir,
        allow_url=settings.allow_url,
        allow_private_urls=settings.allow_private_urls,
        max_pixels=settings.max_pixels,
        max_text_chars=settings.max_text_chars,
        spin=False,  # request handling needs the cycles idle inference threads would burn
    )


def create_app(settings: ServerSettings, encoder: Encoder | None = None) -> FastAPI:
    """The ASGI app for ``settings`` (model, limits, auth, batching); builds the encoder unless given."""
    encoder = encoder or build_encoder(settings)
    service = EncodingService(encoder, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("serving %s", encoder.info())
        yield
        await service.close()

    app = FastAPI(
        title="clipserve",
        summary="CLIP embeddings for texts and images in one latent space",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(RequestGuard, service=service)

    async def require_api_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")

    guarded = [Depends(require_api_key)]

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
        first = exc.errors()[0]
        loc = [part for part in first["loc"] if part != "body"]
        index = next((part for part in loc if isinstance(part, int)), None)
        where = ".".join(str(part) for part in loc) or "body"
        return _error_response(request, 422, "InvalidRequest", f"{where}: {first['msg']}", index)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        response = _error_response(request, 503, "Overloaded", f"server busy: {exc}; retry later", None)
        response.headers["Retry-After"] = "1"
        return response

    def items_from(inputs: list[schemas.Input]) -> list[Item]:
        service.check_count(len(inputs))
        return [
            Item(i, "text", "text", x.text) if x.text is not None else service.image_item(i, x.image)
            for i, x in enumerate(inputs)
        ]

    @app.post("/encode", dependencies=guarded, responses={200: {"model": schemas.EncodeResponse}})
    async def encode(body: schemas.EncodeRequest, request: Request) -> Response:
        """Embed texts and images, in order. ``Accept: application/x-npy`` returns a float32 .npy."""
        vectors, _ = await service.embed(items_from(body.inputs))
        if NPY in request.headers.get("accept", ""):
            buffer = io.BytesIO()
            np.save(buffer, vectors)
            headers = {"X-Clipserve-Model": encoder.spec.name, "X-Clipserve-Dim": str(encoder.dim)}
            return Response(buffer.getvalue(), media_type=NPY, headers=headers)
        return _json({"model": encoder.spec.name, "dim": encoder.dim, "embeddings": vectors})

    @app.post("/rank", dependencies=guarded, response_model=schemas.RankResponse)
    async def rank(body: schemas.RankRequest) -> schemas.RankResponse:
        """Candidates sorted by clip_score: softmax over them of logit_scale × cosine to the query."""
        try:
            vectors, _ = await service.embed(items_from([body.query, *body.candidates]))
        except InvalidInput as exc:
            if exc.index == 0:
                raise InvalidInput(f"query: {exc.reason}") from exc
            raise InvalidInput(f"candidate: {exc.reason}", exc.index - 1) from exc
        order, scores, cosines = clip_scores(vectors[0], vectors[1:], encoder.logit_scale)
        matches = [schemas.Match(index=int(i), clip_score=scores[i], cosine=cosines[i]) for i in order]
        return schemas.RankResponse(model=encoder.spec.name, matches=matches)

    @app.post("/v1/embeddings", dependencies=guarded, responses={200: {"model": schemas.EmbeddingsResponse}})
    async def embeddings(body: schemas.EmbeddingsRequest) -> Response:
        """OpenAI-compatible embeddings; an input that is an image data URI is embedded as an image."""
        if body.model is not None and not service.serves(body.model):
            raise UnknownModel(
                f"model {body.model!r} is not served here; this server serves {encoder.spec.name}"
            )
        if body.dimensions is not None and body.dimensions != encoder.dim:
            raise InvalidInput(
                f"dimensions must be {encoder.dim} for {encoder.spec.name}, got {body.dimensions}"
            )
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not inputs:
            raise InvalidInput("input is empty")
        service.check_count(len(inputs))
        items = [
            service.image_item(i, text)
            if text.startswith("data:") or (settings.allow_url and text.startswith(("http://", "https://")))
            else Item(i, "text", "text", text)
            for i, text in enumerate(inputs)
        ]
        vectors, tokens = await service.embed(items)
        if body.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = list(vectors)
        return _json(
            {
                "object": "list",
                "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(data)],
                "model": encoder.spec.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict:
        """The served model, in OpenAI's list shape."""
        return {
            "object": "list",
            "data": [{"id": encoder.spec.name, "object": "model", "created": 0, "owned_by": "clipserve"}],
        }

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive (no authentication)."""
        return {"status": "ok"}

    @app.get("/readyz", dependencies=guarded)
    async def readyz() -> dict:
        """Model loaded and serving: what runs."""
        return {"status": "ready", **encoder.info()}

    @app.get("/metrics", dependencies=guarded)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _json(content: dict) -> Response:
    """JSON with numpy arrays serialised natively (orjson): vectors are most of every answer."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _error_response(
    request: Request, status: int, error: str, detail: str, index: int | None
) -> JSONResponse:
    """``{"error", "detail", "index"}``; on the OpenAI routes (``/v1/...``) OpenAI's error shape."""
    request.state.error = error
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if request.url.path.startswith("/v1/"):
        body = {"error": {"message": detail, "type": error, "param": None, "code": index}}
    else:
        body = {"error": error, "detail": detail, "index": index}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTPExceptions through its body parsing."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit}-byte limit")


class RequestGuard:
    """ASGI middleware: caps the request body and records each request in the metrics."""

    def __init__(self, app, service: EncodingService) -> None:
        self.app, self.service = app, service
        self.max_bytes = service.settings.max_body_bytes

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
            await send(message)

        try:
            declared = int(dict(scope["headers"]).get(b"content-length", b"0"))
            if declared > self.max_bytes:  # refused before reading a byte of it
                state["error"] = RequestTooLarge.__name__
                body = {"error": state["error"], "detail": BodyTooLarge(self.max_bytes).detail, "index": None}
                await JSONResponse(body, status_code=413)(scope, receive, recording_send)
            else:
                await self.app(scope, capped_receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.service.metrics.request(route, status, time.perf_counter() - start, state.get("error"))
