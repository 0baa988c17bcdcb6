"""The server's text batching, grouped by token count (what it does) against first come, first served.

Texts of mixed lengths (search queries of a few words beside captions of 30 to 60) go through one
:class:`~clipserve.batching.DynamicBatcher` over the text tower of a ViT-B-32 (random weights,
ONNX fp32), as the server runs it, in two traffic shapes: one request of many texts, and many
clients each sending one text at a time. Both orders run in this process on the same model.

    python benchmarks/text_batching.py [--texts 2048] [--clients 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from serving import MODEL, cpu_description, random_export

from clipserve.batching import DynamicBatcher
from clipserve.encoder import Encoder
from clipserve.inputs import Item

WORDS = "a photo of the small red dog running on a beach at sunset near old wooden boats and".split()


def mixed_texts(count: int, seed: int = 0) -> list[str]:
    """Seven in ten are queries of 2 to 8 words, the others captions of 30 to 60."""
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(count) < 0.7, rng.integers(2, 9, count), rng.integers(30, 61, count))
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(n)) for i, n in enumerate(lengths)]


async def one_request(batcher: DynamicBatcher, payloads: list) -> list[float]:
    start = time.perf_counter()
    await batcher.submit(payloads)
    await batcher.close()
    return [(time.perf_counter() - start) * 1000]


async def clients(batcher: DynamicBatcher, payloads: list, count: int) -> list[float]:
    latencies: list[float] = []
    work = iter(payloads)

    async def client() -> None:
        for payload in work:
            start = time.perf_counter()
            await batcher.submit([payload])
            latencies.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(client() for _ in range(count)))
    await batcher.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="clipserve-text-batching-"))
    weights = random_export(workdir)
    with Encoder(MODEL, weights=weights, batch_size=args.batch_size) as encoder:
        pipeline = encoder.pipeline
        tower = pipeline.model.towers["text"]
        texts = mixed_texts(args.texts)
        payloads = [pipeline.prepare(Item(i, "text", "text", t)) for i, t in enumerate(texts)]
        padded: list[int] = []

        def run(batch: list) -> list:
            padded.append(len(batch) * max(len(ids) for ids in batch))
            rows, _ = pipeline.run_batch("text", batch)
            return list(rows)

        print(
            f"{time.strftime('%Y-%m-%d')}, {cpu_description()}; {MODEL} onnx fp32 (random weights), "
            f"text tower, batch {args.batch_size}; {args.texts} texts, "
            f"{sum(map(len, payloads)) / len(payloads):.1f} tokens on average\n"
        )
        print("| traffic | batches | texts/s | latency ms p50/95/99 | padded tokens per text | ratio |")
        print("| --- | --- | ---: | --- | ---: | ---: |")
        with ThreadPoolExecutor(1) as executor:
            run(payloads[: args.batch_size])  # warm-up
            for traffic in ("one request", f"{args.clients} clients"):
                baseline = None
                for name, cost in (("first come", None), ("by cost", tower.cost)):
                    batcher = DynamicBatcher(run, executor, args.batch_size, max_wait_ms=5, cost=cost)
                    padded.clear()
                    start = time.perf_counter()
                    if traffic == "one request":
                        latencies = asyncio.run(one_request(batcher, payloads))
                    else:
                        latencies = asyncio.run(clients(batcher, payloads, args.clients))
                    rate = len(payloads) / (time.perf_counter() - start)
                    baseline = baseline or rate
                    p50, p95, p99 = (np.percentile(latencies, q) for q in (50, 95, 99))
                    print(
                        f"| {traffic} | {name} | {rate:.0f} | {p50:.0f} / {p95:.0f} / {p99:.0f} | "
                        f"{sum(padded) / len(payloads):.1f} | {rate / baseline:.2f} |"
                    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
