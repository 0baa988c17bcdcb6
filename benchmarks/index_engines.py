"""Which library serves an index: usearch, hnswlib and faiss (HNSW) measured on the same vectors,
against exact search (faiss ``IndexFlatIP``), in one run.

Vectors are random unit vectors (no clusters: the hardest case for a graph index), queries are
others of the same kind; or, with ``--photos``, embeddings of random crops of the shared photos
(``--model``, by default a random-weight ViT-B-32 when no real weights are at hand), queries being
other crops. For each library: build time, recall@k against exact top-k, latency p50 and
p99 of single queries, queries/s with 1 and with 16 concurrent callers, the memory the index added
(RSS) and its size on disk.

    python benchmarks/index_engines.py [--count 200000] [--dim 512] [--queries 1000] [--k 10]
    python benchmarks/index_engines.py --photos --count 20000 [--model ViT-B-32::openai]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from photos import PHOTOS
from PIL import Image
from serving import cpu_description, random_export

from clipserve.index.vectors import CONNECTIVITY, EXPANSION_ADD, ann_input, new_ann
from clipserve.resources import resident_bytes


def unit(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def crops(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` random crops (a square of 20 to 100 % of the short side, anywhere, half of them
    mirrored) of the shared photos, as RGB arrays."""
    images = [
        np.asarray(Image.open(p).convert("RGB")) for p in sorted(PHOTOS.glob("*.*")) if p.suffix != ".csv"
    ]
    found = []
    for _ in range(count):
        image = images[rng.integers(len(images))]
        height, width = image.shape[:2]
        side = int(min(height, width) * rng.uniform(0.2, 1.0))
        top, left = rng.integers(height - side + 1), rng.integers(width - side + 1)
        crop = image[top : top + side, left : left + side]
        found.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return found


def photo_embeddings(model: str | None, count: int, queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Embeddings of ``count`` + ``queries`` crops of the shared photos, and what embedded them."""
    from clipserve.encoder import Encoder

    if model is None:
        weights = random_export(Path(tempfile.mkdtemp(prefix="clipserve-engines-model-")), "int8")
        encoder, label = Encoder(weights, precision="int8"), "ViT-B-32, random weights, ONNX int8"
    else:
        encoder, label = Encoder(model), model
    rng = np.random.default_rng(0)
    vectors = []
    with encoder:
        for start in range(0, count + queries, 1000):
            vectors.append(encoder.encode(crops(rng, min(1000, count + queries - start))))
    embedded = np.concatenate(vectors).astype(np.float32)
    return embedded[:count], embedded[count:], label


class Usearch:
    """usearch as clipserve's index makes it (``clipserve.index.vectors``: int8 rows scaled each
    to its largest component, and the cosine metric for them)."""

    name = "usearch"

    def __init__(self, dim: int, dtype: str = "f32") -> None:
        self.dtype = dtype
        self.index = new_ann(dim, dtype)

    def build(self, vectors: np.ndarray) -> None:
        self.index.add(np.arange(len(vectors)), ann_input(vectors, self.dtype), threads=os.cpu_count())

    def tune(self, ef: int) -> None:
        self.index.expansion_search = ef

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(ann_input(query, self.dtype), k, threads=1).keys

    def save(self, path: Path) -> int:
        self.index.save(str(path))
        return path.stat().st_size


class Hnswlib:
    name = "hnswlib"

    def __init__(self, dim: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dim)
        self.dim = dim

    def build(self, vectors: np.ndarray) -> None:
        self.index.init_index(len(vectors), ef_construction=EXPANSION_ADD, M=CONNECTIVITY)
        self.index.add_items(vectors, np.arange(len(vectors)), num_threads=os.cpu_count())

    def tune(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(query, k, num_threads=1)[0][0]

    def save(self, path: Path) -> int:
        self.index.save_index(str(path))
        return path.stat().st_size


class FaissHnsw:
    name = "faiss HNSW"

    def __init__(self, dim: int) -> None:
        import faiss

        self.index = faiss.IndexHNSWFlat(dim, CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EXPANSION_ADD

    def build(self, vectors: np.ndarray) -> None:
        self.index.add(vectors)

    def tune(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(query[None], k)[1][0]

    def save(self, path: Path) -> int:
        import faiss

        faiss.write_index(self.index, str(path))
        return path.stat().st_size


def concurrent_qps(search, queries: np.ndarray, callers: int, seconds: float = 3.0) -> float:
    done = 0
    end = time.perf_counter() + seconds

    def caller(offset: int) -> int:
        count, i = 0, offset
        while time.perf_counter() < end:
            search(queries[i % len(queries)])
            i += callers
            count += 1
        return count

    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        done = sum(pool.map(caller, range(callers)))
    return done / (time.perf_counter() - start)


def measure(label: str, search, queries: np.ndarray, truth: np.ndarray, k: int) -> dict:
    latencies, hits = [], 0
    for query, expected in zip(queries, truth, strict=True):
        start = time.perf_counter()
        found = search(query)
        latencies.append((time.perf_counter() - start) * 1000)
        hits += len(set(map(int, found[:k])) & set(map(int, expected)))
    return {
        "label": label,
        "recall": hits / (len(queries) * k),
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        "qps1": concurrent_qps(search, queries, 1),
        "qps16": concurrent_qps(search, queries, 16),
    }


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef", default="64,128,256")
    parser.add_argument("--photos", action="store_true", help="embeddings of crops of the shared photos")
    parser.add_argument("--model", help="with --photos: the model that embeds them")
    parser.add_argument(
        "--embeddings", type=Path, help="with --photos: an .npz to reuse (written on the first run)"
    )
    args = parser.parse_args()
    if args.photos:
        if args.embeddings is not None and args.embeddings.is_file():
            saved = np.load(args.embeddings)
            vectors, queries, source = saved["vectors"], saved["queries"], str(saved["source"])
        else:
            vectors, queries, source = photo_embeddings(args.model, args.count, args.queries)
            if args.embeddings is not None:
                np.savez(args.embeddings, vectors=vectors, queries=queries, source=source)
        args.dim = vectors.shape[1]
        cosines = (vectors[:2000] @ vectors[:2000].T)[np.triu_indices(min(2000, len(vectors)), 1)]
        source = (
            f"{args.count:,} embeddings of random crops of the shared photos ({source}; mean cosine "
            f"between two {cosines.mean():.3f}), {args.queries} queries (other crops), top-{args.k}"
        )
    else:
        rng = np.random.default_rng(0)
        vectors, queries = unit(rng, args.count, args.dim), unit(rng, args.queries, args.dim)
        source = f"{args.count:,} random unit vectors of dim {args.dim}, {args.queries} queries, top-{args.k}"
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(vectors)
    truth = flat.search(queries, args.k)[1]
    rows = [
        measure(
            "faiss IndexFlatIP (exact)", lambda q: flat.search(q[None], args.k)[1][0], queries, truth, args.k
        )
    ]
    rows[0].update(build=0.0, memory=vectors.nbytes / 2**20, disk=vectors.nbytes / 2**20)
    workdir = Path(tempfile.mkdtemp(prefix="clipserve-engines-"))
    for engine in (
        Usearch(args.dim),
        Usearch(args.dim, "f16"),
        Usearch(args.dim, "i8"),
        Hnswlib(args.dim),
        FaissHnsw(args.dim),
    ):
        before = resident_bytes()
        start = time.perf_counter()
        engine.build(vectors)
        build = time.perf_counter() - start
        memory = (resident_bytes() - before) / 2**20
        disk = (
            engine.save(workdir / f"{engine.name.replace(' ', '-')}-{getattr(engine, 'dtype', 'f32')}.index")
            / 2**20
        )
        for ef in map(int, args.ef.split(",")):
            engine.tune(ef)
            label = f"{engine.name} {getattr(engine, 'dtype', 'f32')}, M={CONNECTIVITY}, ef={ef}"
            row = measure(label, lambda q, engine=engine: engine.search(q, args.k), queries, truth, args.k)
            rows.append({**row, "build": build, "memory": memory, "disk": disk})
        del engine
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_description()}")
    print(source + "\n")
    columns = ["index", "build s", "recall@k", "p50 ms", "p99 ms", "q/s, 1 caller", "q/s, 16 callers"]
    print("| " + " | ".join([*columns, "RSS MiB", "disk MiB"]) + " |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['label']} | {r['build']:.0f} | {r['recall']:.3f} | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{r['qps1']:.0f} | {r['qps16']:.0f} | {r['memory']:.0f} | {r['disk']:.0f} |"
        )


if __name__ == "__main__":
    main()
