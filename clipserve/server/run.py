"""Run the HTTP service (``clipserve serve``): the app of :mod:`clipserve.server.app` under uvicorn."""

from __future__ import annotations

import uvicorn

from clipserve.resources import limit_malloc_arenas
from clipserve.server.app import create_app
from clipserve.settings import ServerSettings

GRACEFUL_SHUTDOWN_S = 30


def serve(settings: ServerSettings, verbose: bool = False) -> None:
    """Load the model, then serve until SIGTERM/SIGINT (requests in flight are finished first)."""
    limit_malloc_arenas()  # before the model and the server start their threads
    app = create_app(settings)  # loads the model now: a bad model or weights fails before binding
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_level="info" if verbose else "warning",
    )
