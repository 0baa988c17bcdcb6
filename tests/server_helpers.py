"""Start a real clipserve server on 127.0.0.1 (a free port) inside the test process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

import httpx
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


@contextmanager
def server_process(*flags: str):
    """Yields ``(base_url, Popen)`` while ``clipserve serve FLAGS`` runs in a process of its own on
    loopback: for what depends on the process's whole memory (RSS bounds), fresh."""
    port = free_port()
    command = [sys.executable, "-m", "clipserve.cli", "serve", "--port", str(port), *flags]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ))
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError as exc:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(
                            f"the server did not start: {log.read().decode()[-2000:]}"
                        ) from exc
                    time.sleep(0.1)
            yield url, process
        finally:
            process.terminate()
            process.wait(30)


def resident_mib(pid: int) -> float:
    """A process's resident memory, MiB."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
