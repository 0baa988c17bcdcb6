"""What an index costs per million vectors: build time, disk, memory of a process serving it, and its
search speed and recall, for the approximate (HNSW) path of ``clipserve.index``.

Builds an index of ``--count`` random unit vectors (given, not embedded: the model is not what is
measured) in each of ``--dtypes``, then opens it in a fresh process to measure what serving it
costs: resident memory after 200 queries (the vectors and the graph are memory-mapped: the page
cache holds the rest), recall@10 against exact search, latency p50/p99, queries/s with 1 and 16
concurrent callers.

    python benchmarks/index_scale.py [--count 1000000] [--dim 512] [--dtypes i8,f32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from serving import cpu_description

from clipserve.index import Index
from clipserve.index.store import DATABASE, Entry
from clipserve.resources import resident_bytes

CHUNK = 100_000
QUERIES = 200
K = 10


@dataclass
class Spec:
    name: str = "random/vectors"
    family: str = "none"


class Vectors:
    """Stands for the encoder: the vectors are given."""

    spec = Spec()
    modalities = ("text",)

    def __init__(self, dim: int) -> None:
        self.dim = dim


def unit_queries(dim: int) -> np.ndarray:
    queries = np.random.default_rng(1).standard_normal((QUERIES, dim)).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def queries_per_second(index: Index, queries: np.ndarray, callers: int, seconds: float = 3.0) -> float:
    end = time.perf_counter() + seconds

    def caller(offset: int) -> int:
        done, i = 0, offset
        while time.perf_counter() < end:
            index.search(vector=queries[i % len(queries)], k=K)
            done, i = done + 1, i + callers
        return done

    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        total = sum(pool.map(caller, range(callers)))
    return total / (time.perf_counter() - start)


def serve(directory: str, dim: int) -> dict:
    """Open the index in this (fresh) process and measure it; the result as one JSON line."""
    queries = unit_queries(dim)
    base = resident_bytes()
    index = Index.open(directory)
    latencies = []
    for query in queries:
        start = time.perf_counter()
        index.search(vector=query, k=K)
        latencies.append((time.perf_counter() - start) * 1000)
    served = resident_bytes() - base
    qps = {callers: queries_per_second(index, queries, callers) for callers in (1, 16)}
    keys, vectors = index.store.vectors(dim)
    hits = 0
    for query in queries:
        exact = set(keys[np.argsort(-(vectors @ query))[:K]].tolist())
        hits += len(exact & {hit.key for hit in index.search(vector=query, k=K)})
    info = index.info()
    return {
        "serves": info["search"],
        "graph": info.get("graph", {}),
        "rss_mib": served / 2**20,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        "qps1": qps[1],
        "qps16": qps[16],
        "recall": hits / (len(queries) * K),
    }


def build(directory: Path, count: int, dim: int, dtype: str) -> float:
    """An index of ``count`` random unit vectors; returns the seconds its update took."""
    index = Index.create(directory, Vectors(dim), dtype=dtype, approximate_from=1)
    rng = np.random.default_rng(0)
    entries, given = [], {}
    for start in range(0, count, CHUNK):
        block = rng.standard_normal((min(CHUNK, count - start), dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        for offset, vector in enumerate(block):
            identifier = f"v{start + offset}"
            entries.append(Entry(identifier, "text", caption=identifier))
            given[identifier] = vector
    started = time.perf_counter()
    index.update(entries, given)
    seconds = time.perf_counter() - started
    index.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtypes", default="i8,f32")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(args.serve, args.dim)))
        return
    rows = []
    for dtype in args.dtypes.split(","):
        directory = Path(tempfile.mkdtemp(prefix=f"clipserve-index-{dtype}-")) / "index"
        seconds = build(directory, args.count, args.dim, dtype)
        files = [path for path in directory.iterdir() if path.is_file()]
        store = sum(p.stat().st_size for p in files if p.name.startswith(DATABASE))
        search = sum(p.stat().st_size for p in files if not p.name.startswith(DATABASE))
        served = subprocess.run(
            [sys.executable, __file__, "--serve", str(directory), "--dim", str(args.dim)],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(served.stdout.splitlines()[-1])
        rows.append({"dtype": dtype, "build": seconds, "store": store, "search": search, **measured})
    per_million = 1e6 / args.count
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_description()}")
    print(f"{args.count:,} random unit vectors of dim {args.dim}, HNSW (usearch, M=32, ef 128)")
    print(f"sizes are per million vectors (measured × {per_million:g})\n")
    header = [
        "stored as",
        "build s",
        "SQLite MiB",
        "search files MiB",
        "serving RSS MiB",
        "serves",
        "graph's probe recall (expansion)",
        "recall@10",
        "p50 ms",
        "p99 ms",
        "q/s, 1",
        "q/s, 16",
    ]
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for row in rows:
        cells = [
            row["dtype"],
            f"{row['build'] * per_million:.0f}",
            f"{row['store'] / 2**20 * per_million:.0f}",
            f"{row['search'] / 2**20 * per_million:.0f}",
            f"{row['rss_mib'] * per_million:.0f}",
            row["serves"],
            f"{row['graph'].get('recall', float('nan')):.3f} ({row['graph'].get('expansion', '-')})",
            f"{row['recall']:.3f}",
            f"{row['p50']:.2f}",
            f"{row['p99']:.2f}",
            f"{row['qps1']:.0f}",
            f"{row['qps16']:.0f}",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
