"""What a Jina Flow costs over the library: images through clipserve's CLIPOnnxEncoder in a Flow
(gRPC, on 127.0.0.1) against ``Encoder.encode`` in this process, on the same ONNX export. The Flow
runs first, so its processes fork before this one loads a model (their peak RSS is their own).

Runs in a Jina environment (``.venv-jina`` or ``.venv-jina-docarray-v1``, built by ``make setup``)::

    .venv-jina/bin/python benchmarks/jina_flow.py --weights EXPORT_DIR [--images 128] [--request-size 16]

``EXPORT_DIR`` is an ONNX export (``clipserve export --model ViT-B-32::openai --output DIR``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("JINA_OPTOUT_TELEMETRY", "1")
os.environ.setdefault("JINA_DEFAULT_HOST", "127.0.0.1")

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos"


def photos(count: int) -> list[np.ndarray]:
    paths = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".png", ".jpg"))
    if not paths:
        sys.exit(f"no photos in {PHOTOS}")
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return [arrays[i % len(arrays)] for i in range(count)]


def percentiles(latencies: list[float]) -> str:
    p50, p95 = np.percentile(np.asarray(latencies) * 1000, [50, 95])
    return f"{p50:.0f} / {p95:.0f}"


def run(weights: str, count: int, request_size: int) -> None:
    import jina.orchestrate.orchestrator as orchestrator
    from jina import Flow

    from clipserve.encoder import Encoder
    from clipserve.jina import DOCARRAY_GENERATION, CLIPOnnxEncoder

    orchestrator.get_public_ip = lambda *args, **kwargs: None  # no public-IP lookup at start
    images = photos(count)
    batches = [images[i : i + request_size] for i in range(0, count, request_size)]
    rows = []

    if DOCARRAY_GENERATION == 1:
        from docarray import Document, DocumentArray

        def to_docs(batch):
            return DocumentArray([Document(tensor=image) for image in batch])

        def post(flow, docs, parameters):
            return flow.post("/encode", inputs=docs, parameters=parameters)
    else:
        from docarray import DocList

        from clipserve.jina import ClipDoc

        def to_docs(batch):
            return DocList[ClipDoc]([ClipDoc(tensor=image) for image in batch])

        def post(flow, docs, parameters):
            return flow.post("/encode", inputs=docs, parameters=parameters, return_type=DocList[ClipDoc])

    flow = Flow(host="127.0.0.1").add(
        uses=CLIPOnnxEncoder, uses_with={"name": "ViT-B-32::openai", "model_path": weights}, host="127.0.0.1"
    )
    with flow:
        post(flow, to_docs(batches[0]), {})
        for drop in (False, True):
            latencies, start = [], time.perf_counter()
            for batch in batches:
                began = time.perf_counter()
                result = post(flow, to_docs(batch), {"drop_image_content": drop})
                latencies.append(time.perf_counter() - began)
            name = f"Jina Flow, CLIPOnnxEncoder (gRPC){', drop_image_content' if drop else ''}"
            rows.append((name, count / (time.perf_counter() - start), percentiles(latencies)))
    executor_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with Encoder("ViT-B-32::openai", weights=weights) as encoder:
        encoder.encode(batches[0])
        latencies, start = [], time.perf_counter()
        for batch in batches:
            began = time.perf_counter()
            encoder.encode(batch)
            latencies.append(time.perf_counter() - began)
        rows.insert(
            0, ("library Encoder.encode", count / (time.perf_counter() - start), percentiles(latencies))
        )
        expected = encoder.encode(batches[-1])
    library_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    got = np.stack([np.asarray(d.embedding, dtype=np.float32) for d in result])
    cosine = float((got * expected).sum(axis=1).min())

    base = rows[0][1]
    title = f"ViT-B-32 images, {count} photos in requests of {request_size}, docarray v{DOCARRAY_GENERATION}"
    print(f"\n### {title}\n")
    print("| path | images/s | × | latency per request p50 / p95 (ms) |\n| --- | ---: | ---: | ---: |")
    for name, rate, latency in rows:
        print(f"| {name} | {rate:.1f} | {rate / base:.2f} | {latency} |")
    print(
        f"\npeak RSS: library process {library_rss:.0f} MiB; Flow processes (largest) {executor_rss:.0f} MiB"
    )
    print(f"cosine Flow to library ≥ {cosine:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="a ViT-B-32 ONNX export directory")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--request-size", type=int, default=16)
    args = parser.parse_args()
    run(args.weights, args.images, args.request_size)


if __name__ == "__main__":
    main()
