"""What the server benchmarks share: a model export, a server subprocess, a light load client, RSS.

The load client is a minimal HTTP/1.1 client on asyncio streams: httpx spends several milliseconds
of CPU per request at 64 connections, which on a 2-core machine starves the server it measures.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from clipserve.resources import cpu_flags, cpu_info, cpu_model

MODEL = "ViT-B-32::openai"


def cpu_description() -> str:
    """CPU model, family/model numbers and the instruction sets that matter for inference."""
    info, flags = cpu_info(), cpu_flags()
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni"]
    extensions = " ".join(f for f in wanted if f in flags)
    return (
        f"{cpu_model()} (family {info.get('cpu family')}, model "
        f"{info.get('model')}; {extensions}), {len(os.sched_getaffinity(0))} CPUs"
    )


def random_export(workdir: Path, precision: str = "fp32", model: str = MODEL, device: str = "cpu") -> str:
    """A random-weight checkpoint of ``model`` (default ViT-B-32) exported to ONNX in ``workdir``
    (and loaded once on ``device``, where its precision runs); returns the export dir."""
    import open_clip
    import torch

    from clipserve.encoder import Encoder
    from clipserve.zoo import get_spec

    spec = get_spec(model)
    checkpoint = workdir / f"{spec.arch}.pt"
    if not checkpoint.exists():
        torch.manual_seed(0)
        torch.save(
            open_clip.create_model(spec.arch, force_quick_gelu=spec.quick_gelu).state_dict(), checkpoint
        )
    with Encoder(model, weights=checkpoint, cache_dir=workdir, precision=precision, device=device) as encoder:
        return str(encoder.info()["weights"])


class GpuUtilisation:
    """Mean GPU utilisation (%) over a run, sampled with ``nvidia-smi`` every 100 ms (CUDA only)."""

    def __init__(self, device: str) -> None:
        self.enabled, self.samples, self._stop = device.startswith("cuda"), [], threading.Event()

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        with subprocess.Popen(query, stdout=subprocess.PIPE, text=True) as smi:
            for line in smi.stdout:
                if self._stop.is_set():
                    smi.terminate()
                    break
                self.samples.append(float(line.split(",")[0]))

    def __enter__(self) -> GpuUtilisation:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> str:
        return f"{np.mean(self.samples):.0f} %" if self.samples else "-"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_process(weights: str | None, *flags: str, env: dict[str, str] | None = None):
    """``clipserve serve`` on 127.0.0.1 in a subprocess; yields ``(url, Popen)`` once it answers.
    ``weights`` None: the flags name the models and their weights (``--model NAME=PATH``)."""
    port = free_port()
    given = ["--weights", weights] if weights is not None else []
    command = [sys.executable, "-m", "clipserve.cli", "serve", *given, "--port", str(port), *flags]
    # The log goes to a file: a pipe nobody reads would fill up and block a chatty server.
    with tempfile.TemporaryFile() as log_file:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=log_file, env={**os.environ, **(env or {})}
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError as exc:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log_file.seek(0)
                        raise RuntimeError(
                            f"the server did not start: {log_file.read().decode()[-2000:]}"
                        ) from exc
                    time.sleep(0.1)
            yield url, process
        finally:
            process.terminate()
            process.wait(30)


def rss_mib(pid: int) -> tuple[float, float]:
    """``(current, peak)`` resident memory of a process, MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one when ``pid`` is None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Outcome:
    """What a load run saw: per request, its kind, status, latency, and the answer's body."""

    indices: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    seconds: float = 0.0


async def drive(
    port: int,
    requests: list[tuple[str, str, bytes]],
    clients: int,
    keep_bodies: bool = False,
    on_progress=None,
) -> Outcome:
    """Send ``requests`` (kind, path, JSON body) over ``clients`` keep-alive connections.

    A connection the server closes (after an error) is reopened. ``on_progress(done)`` is called
    every 1,000 requests.
    """
    outcome = Outcome()
    queue = iter(range(len(requests)))
    done = 0

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in queue:
            kind, path, body = requests[i]
            start = time.perf_counter()
            for attempt in range(2):
                try:
                    writer.write(
                        b"POST %b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%b" % (path.encode(), len(body), body)
                    )
                    head = await reader.readuntil(b"\r\n\r\n")
                    break
                except (ConnectionError, asyncio.IncompleteReadError):
                    if attempt:
                        raise
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
            status = int(head.split(b" ", 2)[1])
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:] if h)
            }
            answer = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            outcome.latencies_ms.append((time.perf_counter() - start) * 1000)
            outcome.indices.append(i)
            outcome.kinds.append(kind)
            outcome.statuses.append(status)
            if keep_bodies:
                outcome.bodies.append(answer)
            if headers.get(b"connection") == b"close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            done += 1
            if on_progress is not None and done % 1000 == 0:
                on_progress(done)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    outcome.seconds = time.perf_counter() - start
    return outcome
