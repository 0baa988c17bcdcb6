"""Decode threads × inference threads on this machine: JPEG bytes → vectors, per precision.

Each configuration runs in a fresh process (torch fixes its thread count at start): inference
threads through ``OMP_NUM_THREADS`` (ONNX Runtime's sessions and torch both follow it), decode
threads through ``num_workers``. Inputs: the shared photos as JPEG (300 to 1000 px), and the same
upscaled to 12 MP. Prints a markdown table of images/s per configuration, best per row in bold.

    python benchmarks/threads.py [--images 128] [--large 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving import cpu_description

from clipserve.resources import BF16_FLAGS, available_cpus, cpu_flags

PATHS = [("onnx", "fp32"), ("onnx", "int8"), ("torch", "bf16")]


def measure(args: argparse.Namespace) -> None:
    """One configuration (in its own process): prints ``{"small": img/s, "large": img/s}``."""
    from photos import jpeg_photos, large_jpeg_photos

    from clipserve.encoder import Encoder

    encoder = Encoder(
        "ViT-B-32::openai",
        backend=args.backend,
        precision=args.precision,
        weights=args.checkpoint,
        cache_dir=args.cache,
        num_workers=args.workers,
        fast_decode=args.fast,
    )
    rates = {}
    for name, photos in (("small", jpeg_photos(args.images)), ("large", large_jpeg_photos(args.large))):
        encoder.encode_image(photos[:8])
        start = time.perf_counter()
        encoder.encode_image(photos)
        rates[name] = len(photos) / (time.perf_counter() - start)
    print(json.dumps(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--large", type=int, default=32)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure(args)
        return

    import open_clip
    import torch

    cpus = available_cpus()
    counts = sorted({1, cpus})
    workdir = Path(tempfile.mkdtemp(prefix="clipserve-threads-"))
    checkpoint = workdir / "ViT-B-32.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32", force_quick_gelu=True).state_dict(), checkpoint)
    paths = [p for p in PATHS if p[1] != "bf16" or cpu_flags() & set(BF16_FLAGS)]
    configs = [(w, t) for w in counts for t in counts]
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_description()}; ViT-B-32, images/s from JPEG bytes\n")
    header = " | ".join(f"{w} decode / {t} inference" for w, t in configs)
    print(f"| path | photos | {header} |")
    print("| --- | --- |" + " ---: |" * len(configs))
    for backend, precision in paths:
        for fast in (False, True):
            rows: dict[str, list[float]] = {"small": [], "large": []}
            for workers, threads in configs:
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    f"--backend={backend}",
                    f"--precision={precision}",
                    f"--workers={workers}",
                    f"--checkpoint={checkpoint}",
                    f"--cache={workdir}",
                    f"--images={args.images}",
                    f"--large={args.large}",
                    *(["--fast"] if fast else []),
                ]
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
                rates = json.loads(output.strip().splitlines()[-1])
                for name in rows:
                    rows[name].append(rates[name])
            for name, rates in rows.items():
                if name == "small" and fast:
                    continue  # the shared photos are under the size the fast path scales
                best = max(rates)
                cells = " | ".join(f"**{r:.1f}**" if r == best else f"{r:.1f}" for r in rates)
                label = f"{backend} {precision}" + (" + fast decode" if fast else "")
                photos = "300–1000 px" if name == "small" else "12 MP"
                print(f"| {label} | {photos} | {cells} |")


if __name__ == "__main__":
    main()
