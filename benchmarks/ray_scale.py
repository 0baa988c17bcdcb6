"""Ray scale-out on this machine: the plain server against Ray Serve with 1 and 2 replicas, and
offline ``Encoder.encode`` against Ray Data jobs with 1 and 2 actors, all in one run.

Serving: ``--clients`` concurrent clients send one JPEG photo per ``/encode`` request (items/s);
then one client sends single short texts one after another: the p50 latency added by Ray's proxy
and router over the plain server is Ray's overhead per request. Bulk: ``--images`` JPEG photos
(as bytes) embedded offline, then by Ray Data jobs. Peak RSS is the model processes' (server or
replicas or actors, summed). Random ViT-B-32 weights exported to ONNX fp32; Ray local, 127.0.0.1.

    python benchmarks/ray_scale.py [--clients 16] [--requests 192] [--images 256]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a single-node Ray on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
import numpy as np
from photos import jpeg_photos
from serving import MODEL, cpu_description, free_port, random_export, rss_mib, server_process

from clipserve.encoder import Encoder


class PeakMemory:
    """Samples the summed RSS of the processes whose command line holds ``marker`` (or ``pid``)."""

    def __init__(self, marker: str | None = None, pid: int | None = None) -> None:
        self.marker, self.pid, self.peak = marker, pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pids(self) -> list[int]:
        if self.pid is not None:
            return [self.pid]
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if self.marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0.0
            for pid in self._pids():
                try:
                    total += rss_mib(pid)[0]
                except (OSError, KeyError):
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def load(url: str, bodies: list[bytes], clients: int) -> tuple[float, list[float]]:
    """(items/s, latencies ms) of ``bodies`` posted to /encode by ``clients`` concurrent clients."""
    queue = iter(bodies)
    latencies: list[float] = []

    async def client(session: httpx.AsyncClient) -> None:
        for body in queue:
            began = time.perf_counter()
            answer = await session.post(
                f"{url}/encode", content=body, headers={"content-type": "application/json"}
            )
            answer.raise_for_status()
            latencies.append((time.perf_counter() - began) * 1000)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return len(bodies) / (time.perf_counter() - start), latencies


def probe(url: str, count: int = 60) -> float:
    """p50 latency (ms) of single short texts sent one after another."""
    latencies = []
    with httpx.Client(timeout=60) as session:
        for i in range(count + 5):
            began = time.perf_counter()
            session.post(f"{url}/encode", json={"inputs": [{"text": f"a cat number {i}"}]}).raise_for_status()
            if i >= 5:
                latencies.append((time.perf_counter() - began) * 1000)
    return float(np.percentile(latencies, 50))


def serving_row(name: str, url: str, bodies: list[bytes], clients: int, memory: PeakMemory) -> tuple:
    asyncio.run(load(url, bodies[:clients], clients))  # warm up
    with memory:
        rate, latencies = asyncio.run(load(url, bodies, clients))
    p50, p95 = np.percentile(latencies, [50, 95])
    return name, rate, p50, p95, probe(url), memory.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()

    import ray
    from ray import serve

    import clipserve.ray
    from clipserve.ray.data import Entry, run_job
    from clipserve.ray.serve import PROXY_ENV, http_options
    from clipserve.settings import EncodeSettings, ServerSettings, resolve

    workdir = Path(tempfile.mkdtemp(prefix="clipserve-ray-"))
    export = random_export(workdir)
    photos = jpeg_photos(args.requests)
    bodies = [json.dumps({"inputs": [{"image": base64.b64encode(p).decode()}]}).encode() for p in photos]

    serving = []
    with server_process(export) as (url, process):
        serving.append(serving_row("plain server", url, bodies, args.clients, PeakMemory(pid=process.pid)))

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": PROXY_ENV})
    port = free_port()
    serve.start(http_options=http_options(resolve(ServerSettings, host="127.0.0.1", port=port)))
    url = f"http://127.0.0.1:{port}"
    for replicas in (1, 2):
        application = clipserve.ray.app(
            model=MODEL, weights=export, replicas=replicas, replica_cpus=2 / replicas
        )
        serve.run(application, name="clipserve", route_prefix="/")
        name = f"Ray Serve, {replicas} replica{'s' if replicas > 1 else ''} × {2 / replicas:g} CPU"
        serving.append(serving_row(name, url, bodies, args.clients, PeakMemory(marker="ServeReplica")))
        serve.delete("clipserve")
    serve.shutdown()

    images = jpeg_photos(args.images)
    bulk = []
    with Encoder(MODEL, weights=export) as encoder:
        encoder.encode(images[:8])
        start = time.perf_counter()
        encoder.encode(images)
        bulk.append(("offline Encoder.encode", args.images / (time.perf_counter() - start)))
    entries = [Entry(str(i), image, None) for i, image in enumerate(images)]
    for actors in (1, 2):
        output = workdir / f"job-{actors}"
        start = time.perf_counter()
        settings = EncodeSettings(
            model=MODEL, weights=export, shard_size=32, replicas=actors, replica_cpus=2 / actors
        )
        run_job(entries, output, settings, progress=False)
        bulk.append(
            (
                f"Ray Data, {actors} actor{'s' if actors > 1 else ''} × {2 / actors:g} CPU",
                args.images / (time.perf_counter() - start),
            )
        )
    ray.shutdown()

    print(f"\n{cpu_description()}")
    print(f"\n### Serving: {args.requests} single-photo /encode requests from {args.clients} clients\n")
    print("| path | images/s | × | p50 / p95 (ms) | p50 one text (ms) | added p50 | peak RSS (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_rate, base_text = serving[0][1], serving[0][4]
    for name, rate, p50, p95, text, peak in serving:
        print(
            f"| {name} | {rate:.1f} | {rate / base_rate:.2f} | {p50:.0f} / {p95:.0f} | {text:.1f} | "
            f"{text - base_text:+.1f} | {peak:.0f} |"
        )
    print(f"\n### Bulk: {args.images} JPEG photos (bytes), job start included\n")
    print("| path | images/s | × |\n| --- | ---: | ---: |")
    for name, rate in bulk:
        print(f"| {name} | {rate:.1f} | {rate / bulk[0][1]:.2f} |")


if __name__ == "__main__":
    main()
