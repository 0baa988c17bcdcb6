"""Start a real clipserve server on 127.0.0.1 (a free port) inside the test process."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn

from clipserve.server.app import create_app
from clipserve.server.run import uvicorn_config
from clipserve.settings import ServerSettings, replace


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(**settings):
    """Yields ``(base_url, app)`` while uvicorn serves ``settings`` on loopback, configured as
    ``clipserve serve`` configures it."""
    config = replace(ServerSettings(host="127.0.0.1", port=free_port()), **settings)
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config))  # as `clipserve serve` runs it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{config.host}:{config.port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
