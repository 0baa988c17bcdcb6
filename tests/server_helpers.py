"""Start a real clipserve server on 127.0.0.1 (a free port) inside the test process, or in a
process of its own (``server_process``, shared with the benchmarks)."""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from clipserve.server.app import create_app
from clipserve.server.run import uvicorn_config
from clipserve.settings import ServerSettings, replace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serving import free_port, server_process

__all__ = ["free_port", "resident_mib", "running_server", "server_process"]


@contextmanager
def running_server(**settings):
    """Yields ``(base_url, app)`` while uvicorn serves ``settings`` on loopback, configured as
    ``clipserve serve`` configures it."""
    # The suite's backend (tests/conftest.py), as `clipserve serve` would read it from the environment.
    backend = os.environ.get("CLIPSERVE_BACKEND", "auto")
    config = replace(ServerSettings(host="127.0.0.1", port=free_port(), backend=backend), **settings)
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


def resident_mib(pid: int) -> float:
    """A process's resident memory, MiB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
