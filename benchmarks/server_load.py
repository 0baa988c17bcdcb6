"""Server load benchmark: N concurrent clients each sending single items to ``/encode``.

CPU use is reported for the server and for the client process (100 % = one core): on a small
machine the load generator competes with the server for the same cores.

Starts ``clipserve serve`` on 127.0.0.1 in a subprocess (random ViT-B-32 weights exported to ONNX),
drives it with asyncio clients from this process, and compares the throughput with offline
``Encoder.encode`` of the same items on the same model, measured in the same run. Prints a markdown
table: throughput, p50/p95/p99 latency, mean batch size formed by the server, and the ratio.

    python benchmarks/server_load.py [--clients 1 16 64] [--requests 384]

On a GPU (GPU utilisation sampled with ``nvidia-smi``):

    python benchmarks/server_load.py --device cuda --precision fp16 --tensor-preprocess \
        --batch-size 256 --clients 64 --requests 20000
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import uvloop
from photos import jpeg_photos
from prometheus_client.parser import text_string_to_metric_families
from serving import (
    MODEL,
    GpuUtilisation,
    cpu_description,
    cpu_seconds,
    drive,
    random_export,
    rss_mib,
    server_process,
)

from clipserve.encoder import Encoder


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests", type=int, default=384, help="image requests per concurrency level")
    parser.add_argument("--text-requests", type=int, default=1536, help="text requests per concurrency level")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:N] or tensorrt[:N]")
    parser.add_argument("--tensor-preprocess", action="store_true", help="decode JPEGs on the device")
    parser.add_argument("--batch-size", type=int, default=None, help="the server's (default: its own)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="clipserve-load-"))
    onnx_dir = random_export(workdir, args.precision, device=args.device)
    engine = {"precision": args.precision, "device": args.device, "tensor_preprocess": args.tensor_preprocess}
    if args.batch_size:
        engine["batch_size"] = args.batch_size
    flags = [
        f"--{key.replace('_', '-')}" + ("" if value is True else f"={value}")
        for key, value in engine.items()
        if value is not False
    ]
    images = jpeg_photos()
    texts = [f"a photo of a {w} number {i}" for i, w in enumerate(["cat", "dog", "rocket", "horse"] * 100)]

    offline = {}
    with Encoder(MODEL, weights=onnx_dir, **engine) as encoder:
        for name, items, count in (("image", images, args.requests), ("text", texts, args.text_requests)):
            work = [items[i % len(items)] for i in range(count)]
            encoder.encode(work[:32])
            start = time.perf_counter()
            encoder.encode(work)
            offline[name] = count / (time.perf_counter() - start)

    requests = {
        "image": [
            ("image", "/encode", json.dumps({"inputs": [{"image": base64.b64encode(b).decode()}]}).encode())
            for b in images
        ],
        "text": [("text", "/encode", json.dumps({"inputs": [{"text": t}]}).encode()) for t in texts],
    }
    with server_process(onnx_dir, *flags, "--max-queue", "100000") as (url, server):
        port = int(url.rsplit(":", 1)[1])
        print(
            f"{time.strftime('%Y-%m-%d')}, {cpu_description()}; {MODEL} onnx {' '.join(flags)}; "
            "server and clients share the machine\n"
        )
        print(
            "| items | clients | requests/s | offline items/s | ratio | latency ms p50/95/99 | p99/p50 "
            "| mean batch | CPU server / clients | server RSS peak MiB | GPU utilisation |"
        )
        print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |")
        for name in ("image", "text"):
            count = args.requests if name == "image" else args.text_requests
            uvloop.run(drive(port, requests[name][:16], 4))  # warm-up
            for clients in args.clients:
                work = [requests[name][i % len(requests[name])] for i in range(count)]
                sum_before, count_before = batch_stats(url)
                cpu_server, cpu_client = cpu_seconds(server.pid), cpu_seconds()
                with GpuUtilisation(args.device) as gpu:
                    outcome = uvloop.run(drive(port, work, clients))
                if set(outcome.statuses) != {200}:
                    raise RuntimeError(f"the server answered {sorted(set(outcome.statuses))}")
                cpu_server = (cpu_seconds(server.pid) - cpu_server) / outcome.seconds
                cpu_client = (cpu_seconds() - cpu_client) / outcome.seconds
                sum_after, count_after = batch_stats(url)
                mean_batch = (sum_after - sum_before) / max(count_after - count_before, 1)
                rate = count / outcome.seconds
                p50, p95, p99 = (np.percentile(outcome.latencies_ms, q) for q in (50, 95, 99))
                print(
                    f"| {name} | {clients} | {rate:.1f} | {offline[name]:.1f} | {rate / offline[name]:.2f} | "
                    f"{p50:.0f} / {p95:.0f} / {p99:.0f} | {p99 / p50:.2f} | {mean_batch:.1f} | "
                    f"{cpu_server:.0%} / {cpu_client:.0%} | {rss_mib(server.pid)[1]:.0f} | {gpu.mean} |"
                )


if __name__ == "__main__":
    main()
