"""Server load benchmark: N concurrent clients each sending single items to ``/encode``.

CPU use is reported for the server and for the client process (100 % = one core): on a small
machine the load generator competes with the server for the same cores.

Starts ``clipserve serve`` on 127.0.0.1 in a subprocess (random ViT-B-32 weights exported to ONNX),
drives it with asyncio clients from this process, and compares the throughput with offline
``Encoder.encode`` of the same items on the same model, measured in the same run. Prints a markdown
table: throughput, p50/p95/p99 latency, mean batch size formed by the server, and the ratio.

    python benchmarks/server_load.py [--clients 1 16 64] [--requests 384]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import open_clip
import torch
import uvloop
from photos import jpeg_photos
from prometheus_client.parser import text_string_to_metric_families

from clipserve.encoder import Encoder

MODEL = "ViT-B-32::openai"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one when ``pid`` is None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_stats(url: str) -> tuple[float, float]:
    """Sum and count of the server's batch-size histogram (all modalities)."""
    total = count = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "clipserve_batch_size_sum":
                total += sample.value
            elif sample.name == "clipserve_batch_size_count":
                count += sample.value
    return total, count


async def load(port: int, bodies: list[bytes], clients: int, requests: int) -> tuple[float, np.ndarray]:
    """``clients`` keep-alive connections posting ``requests`` bodies in all; (requests/s, latencies ms).

    A minimal HTTP/1.1 client on asyncio streams: httpx spends several milliseconds of CPU per
    request at 64 connections, which on a 2-core machine starves the server it is measuring.
    """
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in counter:
            body = bodies[i % len(bodies)]
            start = time.perf_counter()
            writer.write(
                b"POST /encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            if status != 200:
                raise RuntimeError(f"server answered {status}")
            latencies.append(time.perf_counter() - start)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return requests / (time.perf_counter() - start), np.asarray(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests", type=int, default=384, help="image requests per concurrency level")
    parser.add_argument("--text-requests", type=int, default=1536, help="text requests per concurrency level")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="clipserve-load-"))
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", force_quick_gelu=True)
    torch.save(model.state_dict(), workdir / "vit-b-32.pt")
    encoder = Encoder(MODEL, weights=workdir / "vit-b-32.pt", cache_dir=workdir, precision=args.precision)
    onnx_dir = encoder.info()["weights"]
    images = jpeg_photos()
    texts = [f"a photo of a {w} number {i}" for i, w in enumerate(["cat", "dog", "rocket", "horse"] * 100)]

    offline = {}
    for name, items, count in (("image", images, args.requests), ("text", texts, args.text_requests)):
        work = [items[i % len(items)] for i in range(count)]
        encoder.encode(work[:32])
        start = time.perf_counter()
        encoder.encode(work)
        offline[name] = count / (time.perf_counter() - start)
    encoder.close()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipserve.cli",
            "serve",
            "--weights",
            onnx_dir,
            "--port",
            str(port),
            "--precision",
            args.precision,
            "--max-queue",
            "100000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        payloads = {
            "image": [
                json.dumps({"inputs": [{"image": base64.b64encode(b).decode()}]}).encode() for b in images
            ],
            "text": [json.dumps({"inputs": [{"text": t}]}).encode() for t in texts],
        }
        print(
            f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, {MODEL} onnx "
            f"{args.precision}; server and clients share the machine\n"
        )
        print(
            "| items | clients | requests/s | offline items/s | ratio | latency ms p50/95/99 | mean batch "
            "| CPU server / clients |"
        )
        print("| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |")
        for name in ("image", "text"):
            count = args.requests if name == "image" else args.text_requests
            uvloop.run(load(port, payloads[name], 4, 16))  # warm-up
            for clients in args.clients:
                sum_before, count_before = batch_stats(url)
                cpu_server, cpu_client, wall = cpu_seconds(server.pid), cpu_seconds(), time.perf_counter()
                rate, ms = uvloop.run(load(port, payloads[name], clients, count))
                wall = time.perf_counter() - wall
                cpu_server = (cpu_seconds(server.pid) - cpu_server) / wall
                cpu_client = (cpu_seconds() - cpu_client) / wall
                sum_after, count_after = batch_stats(url)
                mean_batch = (sum_after - sum_before) / max(count_after - count_before, 1)
                print(
                    f"| {name} | {clients} | {rate:.1f} | {offline[name]:.1f} | {rate / offline[name]:.2f} | "
                    f"{' / '.join(f'{np.percentile(ms, q):.0f}' for q in (50, 95, 99))} | "
                    f"{mean_batch:.1f} | {cpu_server:.0%} / {cpu_client:.0%} |"
                )
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
