"""Run the HTTP service (``clipserve serve``): the app of :mod:`clipserve.server.app` under uvicorn,
with a deadline for request headers and a cap on connections."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from clipserve.resources import tune_malloc
from clipserve.server.app import create_app
from clipserve.settings import ServerSettings

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 30


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers.

    uvicorn times out idle keep-alive connections, but not a connection that opens and sends
    nothing, nor one that trickles a header line now and then (slowloris): each would hold a
    connection slot forever. The deadline runs from the connection's start, and again from each
    request's first byte, until its headers are complete.
    """

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.info("closing a connection from %s: no complete request headers in time", self.client)
            self.transport.close()


def with_header_deadline(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class with ``seconds`` as its header deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": seconds})


def uvicorn_config(app, settings: ServerSettings, log_level: str = "warning") -> uvicorn.Config:
    """How uvicorn serves ``app``: address, TLS, header deadline, connection cap, graceful stop."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        http=with_header_deadline(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_level=log_level,
    )


class AnnouncedServer(uvicorn.Server):
    """uvicorn's server, saying in one line, once it listens, where and what it serves."""

    def __init__(self, config: uvicorn.Config, announcement: str) -> None:
        super().__init__(config)
        self.announcement = announcement

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self.announcement, file=sys.stderr, flush=True)


def announcement(app, settings: ServerSettings) -> str:
    """``serving MODEL (backend, precision, device) at URL; playground URL/, API docs URL/docs``."""
    scheme = "https" if settings.ssl_certfile else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"{scheme}://{host}:{settings.port}"
    models = []
    for model in app.state.models.models.values():
        info = model.describe()
        runs = [str(info[k]) for k in ("backend", "precision", "device") if info.get(k)]
        if info["state"] != "ready":
            runs.append("loads on its first request")
        models.append(f"{model.name} ({', '.join(runs)})")
    where = [f"playground {url}/"] if settings.playground else []
    everywhere = " (all interfaces)" if settings.host in ("0.0.0.0", "::") else ""
    return f"clipserve: serving {', '.join(models)} at {url}{everywhere}; " + ", ".join(
        [*where, f"API docs {url}/docs"]
    )


def serve(settings: ServerSettings, verbose: bool = False) -> None:
    """Load the model, then serve until SIGTERM/SIGINT (requests in flight are finished first)."""
    tune_malloc()  # before the model and the server start their threads
    app = create_app(settings)  # loads the model now: a bad model or weights fails before binding
    config = uvicorn_config(app, settings, "info" if verbose else "warning")
    AnnouncedServer(config, announcement(app, settings)).run()
