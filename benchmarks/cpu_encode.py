"""CPU encoding benchmark: open_clip's own pipeline vs clipserve (torch and ONNX), in one process.

Images are JPEG bytes → L2-normalised vectors (decode + preprocess + model); texts are captions →
vectors. Weights are random (same shapes and FLOPs as the released ones; hubs are unreachable here).
Prints a markdown table: throughput, per-batch latency percentiles, peak RSS during the run, and
the ratio to open_clip.

    python benchmarks/cpu_encode.py [--model ViT-B-32::openai] [--images 256] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from clipserve.encoder import Encoder
from clipserve.zoo import get_spec

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


class PeakRss:
    """Samples this process's resident memory in the background; ``peak`` in MiB."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s, self.peak, self._stop = interval_s, 0.0, threading.Event()

    def _rss_mib(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss_mib())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(run_batch: Callable[[list], np.ndarray], inputs: list, batch_size: int) -> dict[str, float]:
    run_batch(inputs[:batch_size])  # warm-up
    latencies = []
    with PeakRss() as rss:
        start = time.perf_counter()
        for i in range(0, len(inputs), batch_size):
            t = time.perf_counter()
            out = run_batch(inputs[i : i + batch_size])
            latencies.append(time.perf_counter() - t)
            assert out.shape[0] == len(inputs[i : i + batch_size])
        total = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "per_s": len(inputs) / total,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "rss": rss.peak,
    }


def jpeg_inputs(count: int) -> list[bytes]:
    with open(PHOTOS / "labels.csv") as f:
        files = [PHOTOS / row["file"] for row in csv.DictReader(f)]
    jpegs = []
    for path in files:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
    return [jpegs[i % len(jpegs)] for i in range(count)]


def captions(count: int) -> list[str]:
    with open(PHOTOS / "labels.csv") as f:
        base = [row["caption"] for row in csv.DictReader(f)]
    return [f"{base[i % len(base)]} number {i}" for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32::openai")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    spec = get_spec(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="clipserve-bench-"))
    torch.manual_seed(0)
    model = open_clip.create_model(spec.arch, force_quick_gelu=spec.quick_gelu).eval()
    checkpoint = workdir / "random.pt"
    torch.save(model.state_dict(), checkpoint)
    transform = open_clip.image_transform(
        spec.image_size[0],
        is_train=False,
        mean=spec.mean,
        std=spec.std,
        resize_mode=spec.resize_mode,
        interpolation=spec.interpolation,
    )
    tokenizer = open_clip.get_tokenizer(spec.arch)

    @torch.inference_mode()
    def open_clip_images(batch: list[bytes]) -> np.ndarray:
        pixels = torch.stack([transform(Image.open(io.BytesIO(b))) for b in batch])
        return torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()

    @torch.inference_mode()
    def open_clip_texts(batch: list[str]) -> np.ndarray:
        return torch.nn.functional.normalize(model.encode_text(tokenizer(batch)), dim=-1).numpy()

    encoders = {
        backend: Encoder(
            args.model, backend=backend, weights=checkpoint, cache_dir=workdir, batch_size=args.batch_size
        )
        for backend in ("torch", "onnx")
    }
    images, texts = jpeg_inputs(args.images), captions(args.texts)
    rows = [
        (
            "open_clip (torch fp32)",
            measure(open_clip_images, images, args.batch_size),
            measure(open_clip_texts, texts, args.batch_size),
        )
    ]
    for backend, encoder in encoders.items():
        rows.append(
            (
                f"clipserve {backend} fp32",
                measure(encoder.encode_image, images, args.batch_size),
                measure(encoder.encode_text, texts, args.batch_size),
            )
        )

    print(
        f"\n{args.model}, batch {args.batch_size}, {args.images} JPEG images, {args.texts} captions; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print("| pipeline | images/s | × open_clip | batch ms p50/95/99 | texts/s | × open_clip | peak RSS MiB |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    base_img, base_txt = rows[0][1]["per_s"], rows[0][2]["per_s"]
    for name, img, txt in rows:
        print(
            f"| {name} | {img['per_s']:.1f} | {img['per_s'] / base_img:.2f} | "
            f"{img['p50']:.0f} / {img['p95']:.0f} / {img['p99']:.0f} | {txt['per_s']:.1f} | "
            f"{txt['per_s'] / base_txt:.2f} | {max(img['rss'], txt['rss']):.0f} |"
        )


if __name__ == "__main__":
    main()
