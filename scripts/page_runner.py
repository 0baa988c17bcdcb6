"""Run a documentation page as a reader would: its Python blocks and shell lines, in order.

Used by ``tests/test_docs_run.py`` (the first-hour pages, in the development environment) and by
``scripts/newcomer.py`` (the getting-started page, on a fresh install). A block that cannot run
offline carries ``<!-- not run: why -->`` on the line above it. A ``clipserve serve`` line starts
the page's server (a later one replaces it), which the page's next blocks talk to; it listens on
loopback only, whatever ``--host`` the page shows (:data:`LOOPBACK`, given last, wins).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

FENCE = re.compile(
    r"^(<!-- not run: (?P<why>[^>]+) -->\n)?```(?P<kind>python|bash)\n(?P<code>.*?)^```", re.M | re.S
)
PORT = 51000
"""The port the pages show."""
LOOPBACK = "--host 127.0.0.1"
"""Appended to each ``clipserve serve`` line: a page's server for other machines (``--host 0.0.0.0``)
still binds loopback alone here."""
PREAMBLE = """
import base64
import numpy as np
from PIL import Image
pil_image = Image.open("photos/cat.jpg")
rgb_uint8_array = np.asarray(pil_image.convert("RGB"))
data_uri = "data:image/png;base64," + base64.b64encode(open("photos/dog.png", "rb").read()).decode()
jpeg_paths = ["photos/cat.jpg"]
"""
"""Names the pages use for inputs a reader brings (a PIL image, an array, a data URI)."""


@dataclass(frozen=True)
class Block:
    """A fenced block of a page: ``python`` or ``bash``, and why it is not run (None: it runs)."""

    kind: str
    code: str
    not_run: str | None


def page_blocks(page: Path) -> list[Block]:
    """The Python and shell blocks of ``page``, in order."""
    return [Block(m["kind"], m["code"], m["why"]) for m in FENCE.finditer(page.read_text())]


def lay_out_home(home: Path, photos: list[Path]) -> None:
    """Lay ``home`` out as the pages assume, from four ``photos``: ``photos/cat.jpg``,
    ``photos/dog.png``, ``photos/2024/beach.jpg``, ``scans/page-1.png``, ``cat.jpg``,
    ``query.jpg`` and ``captions.parquet`` (ids and texts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    (home / "photos" / "2024").mkdir(parents=True)
    (home / "scans").mkdir()
    Image.open(photos[0]).convert("RGB").save(home / "photos" / "cat.jpg")
    Image.open(photos[1]).save(home / "photos" / "dog.png")
    Image.open(photos[2]).convert("RGB").save(home / "photos" / "2024" / "beach.jpg")
    Image.open(photos[3]).save(home / "scans" / "page-1.png")
    Image.open(photos[0]).convert("RGB").save(home / "cat.jpg")
    Image.open(photos[1]).convert("RGB").save(home / "query.jpg")
    captions = pa.table({"id": ["c1", "c2"], "text": ["a red bicycle", "a cat on a sofa"]})
    pq.write_table(captions, home / "captions.parquet")


def assert_port_free(port: int) -> None:
    """Nothing listens on ``port`` (loopback) before a page's server takes it."""
    with socket.socket() as probe:
        taken = probe.connect_ex(("127.0.0.1", port)) == 0
    assert not taken, f"port {port}, the one the pages show, is taken: free it first"


@dataclass
class Step:
    """One command or Python block run, and how it went."""

    what: str
    seconds: float
    returncode: int
    output: str


@dataclass
class Reader:
    """Runs blocks in ``home`` with ``env``: Python in a fresh ``python`` each, shell lines in bash,
    ``clipserve serve`` lines as the page's one server. Each run is recorded in ``steps``; a
    failure raises AssertionError with the block and its output."""

    home: Path
    env: dict[str, str]
    python: str = sys.executable
    steps: list[Step] = field(default_factory=list)
    server: subprocess.Popen | None = None

    def run(self, block: Block) -> None:
        if block.kind == "python":
            self.execute([self.python, "-c", PREAMBLE + block.code], block.code)
            return
        for line in block.code.replace("\\\n", " ").splitlines():
            command = line.split(" #", 1)[0].strip()
            if re.match(r"^(\w+=\S+ )*clipserve serve\b", command):
                self.serve(command.rstrip("&").strip())
            elif command:
                self.execute(["bash", "-c", f"set -euo pipefail\n{command}"], command)

    def execute(self, argv: list[str], what: str) -> None:
        started = time.monotonic()
        done = subprocess.run(argv, cwd=self.home, env=self.env, capture_output=True, text=True, timeout=300)
        output = f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
        self.steps.append(Step(what, time.monotonic() - started, done.returncode, output))
        assert done.returncode == 0, f"{what}\nexited {done.returncode}:\n{output}"

    def serve(self, command: str) -> None:
        """Start ``command`` (a ``clipserve serve`` line) and wait until it answers ``/healthz``
        (the server loads its model before it binds)."""
        self.stop()
        assert_port_free(PORT)
        started = time.monotonic()
        pinned = f"exec env {command} {LOOPBACK}"
        self.server = subprocess.Popen(["bash", "-c", pinned], cwd=self.home, env=self.env)
        while time.monotonic() - started < 300:
            assert self.server.poll() is None, f"{command!r} exited with {self.server.returncode}"
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/healthz", timeout=2).status_code == 200:
                    self.steps.append(Step(command, time.monotonic() - started, 0, "serving"))
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"{command!r} was not serving within 300 s")

    def stop(self) -> None:
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(timeout=60)
            self.server = None

    def read(self, page: Path) -> int:
        """Run every block of ``page`` that is not marked, in order; the number run."""
        ran = 0
        try:
            for block in page_blocks(page):
                if block.not_run is None:
                    self.run(block)
                    ran += 1
        finally:
            self.stop()
        return ran
