"""What every request passes before a route runs, and the bounds on JSON bodies.

:class:`RequestGuard` (ASGI middleware) checks the API key and the declared body size before a
byte of the body is read, then counts the body's bytes as they arrive: against the request's size
limit, against the bytes of all bodies in flight, and against a deadline for the whole body, so a
client that declares 16 MB and goes silent holds nothing and is cut off. Error answers have one
shape (:func:`error_response`).

JSON bodies are bounded before they are parsed (:func:`check_json_values`) and parsed off the event
loop when large (:class:`OffLoopJSONRoute`).
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from clipserve.errors import ClipserveError, Overloaded, RequestTooLarge, Unauthorized, echo
from clipserve.server.apis import PROBE_PATHS, api_of
from clipserve.server.metrics import Metrics
from clipserve.settings import ServerSettings

OPEN_PATHS = frozenset(
    {"/healthz", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/", "/playground"}
    | PROBE_PATHS
)
"""Paths without the API key: health (ours and the compat APIs' probes), the API docs and the
playground's page (which asks for the key)."""
DOCS_ASSETS = "/static-offline-docs"
OPEN_PREFIXES = (DOCS_ASSETS + "/", "/playground/static/")
PAGE_POLICY = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)
"""On every HTML answer: the pages may load nothing from elsewhere (ReDoc's bundle links a logo on
its CDN) and may not be framed."""
INLINE_JSON_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop (faster than a thread hop); larger ones off it."""
RETRY_AFTER_S = "1"
SERVED_BY_HEADER = b"x-clipserve-model"
"""On every answer to a request that passed the API key: the model that answered (and, behind a
proxy, that the app did)."""
JSON_VALUES_PER_ITEM = 4
"""An item is an object with one key, and a comma: 3 structural characters; 4 leaves slack."""


# -- JSON bounds ------------------------------------------------------------------------------------

STRUCTURAL = np.zeros(256, dtype=bool)
STRUCTURAL[list(b"{[,:")] = True
QUOTE = ord('"')


def structure_outside_strings(body: bytes) -> int:
    """The ``{ [ , :`` characters of ``body`` outside JSON strings: a bound on the values it holds.

    Linear in the body, whatever it holds (a regular expression over strings backtracks
    quadratically on an unterminated one full of escaped quotes). Escaped backslashes and quotes
    are removed first, left to right as a JSON reader pairs them; every quote left then opens or
    closes a string, so the parity of the quotes before a character says whether it is inside one.
    Outside strings a backslash is invalid JSON: a parser stops there, and the count of what comes
    before is exact.
    """
    cleaned = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = np.frombuffer(cleaned, dtype=np.uint8)
    inside = np.cumsum(data == QUOTE, dtype=np.uint8) & 1  # uint8 wraps at 256: the parity survives
    return int(np.count_nonzero(STRUCTURAL[data] & (inside == 0)))


def check_json_values(body: bytes, limit: int) -> None:
    """Refuse a body that would parse into more than about ``limit`` JSON values, before parsing it.

    Parsing materialises every value: 16 MB of ``{},{},…`` are 5 million dicts and ~1.4 GB. The
    structural characters outside strings bound the number of values. A quick count over the whole
    body comes first; strings are set aside (:func:`structure_outside_strings`) only when it is
    already over the limit.
    """
    if sum(body.count(c) for c in (b"{", b"[", b",", b":")) <= limit:
        return
    if structure_outside_strings(body) > limit:
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
            scope = request.scope
            if not any(name == b"content-type" for name, _ in scope["headers"]):
                # A body without a Content-Type is JSON here, as on the peers' servers: some of their
                # clients send none (clip-retrieval's ClipClient, Weaviate's multi2vec-clip to 1.25).
                scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
            return await handler(OffLoopJSONRequest(scope, request.receive))

        return route


# -- errors -----------------------------------------------------------------------------------------


def error_response(
    scope: dict,
    status: int,
    error: str,
    detail: str,
    index: int | None,
    retry_after_s: float | None = None,
) -> JSONResponse:
    """The error body of the API the request's path belongs to (:func:`~clipserve.server.apis.api_of`):
    ``{"error", "detail", "index"}`` on clipserve's routes. A 503 says when to retry
    (``retry_after_s``, else 1 s). The error's name is kept for the metrics (``state["error"]``)."""
    scope.setdefault("state", {})["error"] = error
    detail = echo(detail, 2000)
    api = api_of(scope["path"], scope.get("method", "GET"))
    status = api.status_of(error, status)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == Overloaded.http_status:
        headers["Retry-After"] = str(math.ceil(retry_after_s)) if retry_after_s else RETRY_AFTER_S
    body = api.error_body(status, error, detail, index)
    return JSONResponse(body, status_code=status, headers=headers)


class BodyRefused(HTTPException):
    """Raised while the body streams in (FastAPI passes HTTPExceptions through its body parsing);
    ``error`` is the name the answer gives."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(status, detail)
        self.error = error


def body_too_large(limit: int) -> BodyRefused:
    return BodyRefused(413, "RequestTooLarge", f"request body over the {limit}-byte limit")


# -- the guard --------------------------------------------------------------------------------------


class RequestGuard:
    """ASGI middleware, before any route: API key, body size, body bytes in flight, body deadline;
    the security headers; and the request metrics.

    ``default`` names the model recorded for a request that chose none (``state["model"]``).
    """

    def __init__(self, app, settings: ServerSettings, metrics: Metrics, default) -> None:
        self.app, self.metrics, self.default = app, metrics, default
        api_key = settings.resolved_api_key()
        self.api_key = api_key.encode() if api_key is not None else None
        self.max_bytes = settings.max_body_bytes
        self.max_inflight = settings.max_inflight_bytes
        self.body_timeout_s = settings.body_timeout_s
        self.inflight = 0
        """Body bytes that have arrived, of the requests being handled."""

    def authorised(self, scope) -> bool:
        if self.api_key is None:
            return True
        given = dict(scope["headers"]).get(b"authorization", b"")
        return hmac.compare_digest(given, b"Bearer " + self.api_key)

    def admit(self, scope, authorised: bool) -> None:
        """Raises why the request is refused before its body is read."""
        path = scope["path"]
        reading = scope["method"] in ("GET", "HEAD")  # what is open is open to read (POST / is TEI's)
        if not authorised and not (reading and (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES))):
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            length = int(declared)  # the HTTP server has checked it is a number
            if length > self.max_bytes:
                raise RequestTooLarge(body_too_large(self.max_bytes).detail)
            if self.inflight and self.inflight + length > self.max_inflight:  # one request always fits
                raise Overloaded(f"{self.inflight} request bytes are being handled; retry later")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        state = scope.setdefault("state", {})
        authorised = self.authorised(scope)
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + self.body_timeout_s
        held = 0
        body_done = scope["method"] in ("GET", "HEAD")

        async def counted_receive():
            nonlocal held, body_done
            if body_done:  # after the body: waiting for a disconnect has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, body_deadline - loop.time()))
            except TimeoutError:
                raise BodyRefused(
                    408,
                    "RequestTimeout",
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                ) from None
            size = len(message.get("body", b""))
            held += size
            self.inflight += size
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if held > self.max_bytes:
                raise body_too_large(self.max_bytes)
            if size and self.inflight > self.max_inflight and self.inflight > held:
                raise BodyRefused(
                    503, "Overloaded", f"{self.inflight} request bytes are being handled; retry later"
                )
            return message

        async def guarded_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if authorised:
                    model = state.get("model", self.default)
                    headers.append((SERVED_BY_HEADER, model.name.encode()))
                if any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                    headers.append((b"content-security-policy", PAGE_POLICY))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            try:
                self.admit(scope, authorised)
            except ClipserveError as error:
                answer = error_response(scope, error.http_status, type(error).__name__, str(error), None)
                await answer(scope, receive, guarded_send)
                return
            await self.app(scope, counted_receive, guarded_send)
        finally:
            self.inflight -= held
            route = getattr(scope.get("route"), "path", "unmatched")
            model = state.get("model", self.default)
            api = api_of(scope["path"], scope["method"]).name
            seconds = time.perf_counter() - start
            self.metrics.request(route, api, status, seconds, state.get("error"), model.metrics.served)
