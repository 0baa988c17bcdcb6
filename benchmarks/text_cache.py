"""Search-box traffic: single-text requests whose queries follow a Zipf law (a few are very common),
sent to the server with and without the text cache, in the same run.

    python benchmarks/text_cache.py [--requests 4000] [--distinct 1000] [--clients 16] [--cache 10000]

Random ViT-B-32 weights exported to ONNX fp32; the server on 127.0.0.1 in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import uvloop
from serving import cpu_description, drive, random_export, server_process


def zipf_queries(requests: int, distinct: int, exponent: float = 1.1, seed: int = 0) -> list[str]:
    """``requests`` queries drawn from ``distinct`` ones, the k-th most common with weight k^-s."""
    words = ["cat", "dog", "beach at sunset", "red car", "birthday cake", "mountain lake", "city at night"]
    vocabulary = [f"a photo of a {words[i % len(words)]} {i}" for i in range(distinct)]
    weights = 1.0 / np.arange(1, distinct + 1) ** exponent
    picks = np.random.default_rng(seed).choice(distinct, size=requests, p=weights / weights.sum())
    return [vocabulary[i] for i in picks]


def cache_counts(url: str) -> tuple[float, float]:
    hits = misses = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("clipserve_text_cache_lookups_total"):
            value = float(line.split()[-1])
            if 'outcome="hit"' in line:
                hits += value
            else:
                misses += value
    return hits, misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--distinct", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--cache", type=int, default=10_000)
    args = parser.parse_args()

    export = random_export(Path(tempfile.mkdtemp(prefix="clipserve-cache-")))
    queries = zipf_queries(args.requests, args.distinct)
    work = [("text", "/encode", json.dumps({"inputs": [{"text": q}]}).encode()) for q in queries]
    rows = []
    for label, flags in (
        ("no cache", ()),
        (f"text cache of {args.cache}", ("--text-cache", str(args.cache))),
    ):
        with server_process(export, *flags) as (url, _):
            port = urlparse(url).port
            uvloop.run(drive(port, work[:32], 4))  # warm-up
            before = cache_counts(url)
            outcome = uvloop.run(drive(port, work, args.clients))
            after = cache_counts(url)
        assert set(outcome.statuses) == {200}, set(outcome.statuses)
        hits, misses = after[0] - before[0], after[1] - before[1]
        rate = f"{hits / (hits + misses):.0%}" if hits + misses else "—"
        p50, p95, p99 = np.percentile(outcome.latencies_ms, [50, 95, 99])
        rows.append((label, len(work) / outcome.seconds, p50, p95, p99, rate))

    print(f"\n{cpu_description()}")
    distinct_sent = len(set(queries))
    print(
        f"\n### {args.requests} single-text requests, {distinct_sent} distinct queries (Zipf 1.1), "
        f"{args.clients} clients\n"
    )
    print(
        "| server | requests/s | × | p50 / p95 / p99 (ms) | cache hits |\n| --- | ---: | ---: | ---: | ---: |"
    )
    for label, rate, p50, p95, p99, hit_rate in rows:
        latency = f"{p50:.1f} / {p95:.1f} / {p99:.1f}"
        print(f"| {label} | {rate:.0f} | {rate / rows[0][1]:.2f} | {latency} | {hit_rate} |")


if __name__ == "__main__":
    main()
