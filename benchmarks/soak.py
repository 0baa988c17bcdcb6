"""Soak the running server: many mixed requests at high concurrency; memory and tail latency must
stay flat, and no good request may fail.

Starts ``clipserve serve`` (random ViT-B-32 weights, ONNX) on 127.0.0.1 and sends N requests
(default 100,000) over 64 keep-alive connections: texts (70 %), single images (15 %), rank of an
image against five captions (10 %) and requests with a bad item (5 %, which must answer 422).
RSS is sampled every 1,000 requests; the table compares the first and the last tenth of the run.

    python benchmarks/soak.py [--requests 100000] [--clients 64] [--precision int8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from photos import jpeg_photos
from serving import cpu_description, drive, random_export, rss_mib, server_process


def build_requests(count: int, rng: random.Random) -> list[tuple[str, str, bytes]]:
    """The mix of the run; bodies of the same content are one object (the run holds 100,000)."""
    images = [base64.b64encode(jpeg).decode() for jpeg in jpeg_photos()]
    captions = ["a cat", "a rocket", "an astronaut", "coffee", "coins", "a horse", "grass", "bricks"]
    single = [json.dumps({"inputs": [{"image": image}]}).encode() for image in images]
    ranks = [
        json.dumps({"query": {"image": image}, "candidates": [{"text": c} for c in captions[:5]]}).encode()
        for image in images
    ]
    bad = json.dumps({"inputs": [{"text": "fine"}, {"image": base64.b64encode(b"not an image").decode()}]})
    requests = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.70:
            body = {
                "inputs": [{"text": f"{rng.choice(captions)} number {i}"} for _ in range(rng.randint(1, 3))]
            }
            requests.append(("text", "/encode", json.dumps(body).encode()))
        elif roll < 0.85:
            requests.append(("image", "/encode", rng.choice(single)))
        elif roll < 0.95:
            requests.append(("rank", "/rank", rng.choice(ranks)))
        else:
            requests.append(("bad", "/encode", bad.encode()))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--precision", default="int8")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clipserve-soak-"))
    weights = random_export(workdir, args.precision)
    requests = build_requests(args.requests, random.Random(0))
    samples: list[tuple[int, float]] = []
    with server_process(weights, "--precision", args.precision) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        asyncio.run(drive(port, requests[:200], 8))  # warm-up
        start_rss = rss_mib(process.pid)[0]

        def sample(done: int) -> None:
            samples.append((done, rss_mib(process.pid)[0]))

        outcome = asyncio.run(drive(port, requests, args.clients, on_progress=sample))
        peak = rss_mib(process.pid)[1]

    kinds = np.asarray(outcome.kinds)
    statuses = np.asarray(outcome.statuses)
    latencies = np.asarray(outcome.latencies_ms)
    good = kinds != "bad"
    failed_good = int((statuses[good] != 200).sum())
    bad_not_422 = int((statuses[~good] != 422).sum())
    tenth = max(1, len(latencies) // 10)
    rss = np.asarray([r for _, r in samples])
    rss_tenth = max(1, len(rss) // 10)
    first_rss, last_rss = rss[:rss_tenth].mean(), rss[-rss_tenth:].mean()

    print(f"{time.strftime('%Y-%m-%d')}, {cpu_description()}; ViT-B-32 onnx {args.precision}")
    print(
        f"{len(requests)} requests over {args.clients} connections in {outcome.seconds / 60:.1f} min "
        f"({len(requests) / outcome.seconds:.0f} requests/s)"
    )
    print(f"good requests that failed: {failed_good}; bad requests not answered 422: {bad_not_422}")
    growth = 100 * (last_rss / first_rss - 1)
    print(
        f"RSS after warm-up {start_rss:.0f} MiB; mean over the first tenth {first_rss:.0f} MiB, over the "
        f"last tenth {last_rss:.0f} MiB (growth {growth:+.1f} %); peak {peak:.0f} MiB"
    )
    print("\n| part of the run | p50 ms | p95 ms | p99 ms |\n| --- | ---: | ---: | ---: |")
    for name, part in (
        ("first tenth", latencies[:tenth]),
        ("last tenth", latencies[-tenth:]),
        ("all", latencies),
    ):
        p50, p95, p99 = (np.percentile(part, q) for q in (50, 95, 99))
        print(f"| {name} | {p50:.0f} | {p95:.0f} | {p99:.0f} |")
    print("\n| kind | requests | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: |")
    for kind in ("text", "image", "rank", "bad"):
        part = latencies[kinds == kind]
        print(f"| {kind} | {len(part)} | {np.percentile(part, 50):.0f} | {np.percentile(part, 99):.0f} |")
    if failed_good or bad_not_422 or last_rss > 1.05 * first_rss:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
