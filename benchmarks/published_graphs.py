"""Speed of the ONNX graphs others publish, read by clipserve without torch, against clipserve's own
export of the same weights.

One random ViT-B-32 is written in each publisher's layout (as ``tests/published_layouts.py`` makes
them: immich's newer static-batch graphs and its 2023 dynamic ones, clip-as-service's files,
fastembed's repos) and exported by clipserve; each runs through an ``Encoder`` in this process:
JPEG photos to vectors, and mixed-length texts (queries of 2 to 8 words, captions of 30 to 60).

    python benchmarks/published_graphs.py [--images 64] [--texts 512] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from photos import jpeg_photos
from serving import MODEL, cpu_description, random_export
from text_batching import mixed_texts

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from clipserve.encoder import Encoder
from tests.published_layouts import (
    clip_as_service_layout,
    fastembed_layout,
    immich_layout,
    prefill_hub_cache,
)


def layouts(workdir: Path, model) -> dict[str, dict]:
    """Each source's Encoder arguments, its stand-in written under ``workdir``."""
    cache = workdir / "cache"
    immich = immich_layout(model, "ViT-B-32", workdir / "immich" / "ViT-B-32__openai")
    prefill_hub_cache(immich, "immich-app/ViT-B-32__openai", cache / "hub")
    dynamic = immich_layout(
        model, "ViT-B-32", workdir / "immich-2023" / "ViT-B-32__openai", static_batch=False
    )
    # clip-as-service's files where a finished download leaves them (its table's md5s are of the
    # real files, not of these)
    clip_as_service_layout(model, 224, cache / "published" / "clip-as-service" / "ViT-B-32")
    fastembed_layout(model, workdir / "fe-vision", workdir / "fe-text")
    for part, path in (("vision", workdir / "fe-vision"), ("text", workdir / "fe-text")):
        prefill_hub_cache(path, f"Qdrant/clip-ViT-B-32-{part}", cache / "hub")
    return {
        "immich (static batch 1)": {"model": MODEL, "source": "immich", "cache_dir": cache},
        "immich 2023 (dynamic batch)": {"model": str(dynamic), "cache_dir": cache},
        "clip-as-service": {"model": MODEL, "source": "clip-as-service", "cache_dir": cache},
        "fastembed": {"model": MODEL, "source": "fastembed", "cache_dir": cache},
    }


def measure(encoder: Encoder, images: list[bytes], texts: list[str], rounds: int = 3) -> tuple[float, float]:
    """Best of ``rounds``: images/s (JPEG bytes to vectors) and texts/s."""
    encoder.encode(images[:4])
    encoder.encode_text(texts[:8])
    image_rates, text_rates = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        encoder.encode(images)
        image_rates.append(len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        encoder.encode_text(texts)
        text_rates.append(len(texts) / (time.perf_counter() - start))
    return max(image_rates), max(text_rates)


def main() -> None:
    import open_clip
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="clipserve-published-"))
    own = random_export(workdir)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", force_quick_gelu=True).eval()
    model.load_state_dict(torch.load(workdir / "ViT-B-32.pt", weights_only=True))
    sources = layouts(workdir, model)
    os.environ["CLIPSERVE_OFFLINE"] = "1"
    photos = jpeg_photos()
    images = [photos[i % len(photos)] for i in range(args.images)]
    texts = mixed_texts(args.texts)

    print(
        f"{time.strftime('%Y-%m-%d')}, {cpu_description()}; {MODEL} fp32 (random weights), ONNX Runtime, "
        f"batch {args.batch_size}; {len(images)} JPEG photos, {len(texts)} mixed texts\n"
    )
    print("| graph | images/s | ratio | texts/s | ratio | batch axis |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    reference = None
    with Encoder(MODEL, weights=own, batch_size=args.batch_size) as encoder:
        base_images, base_texts = measure(encoder, images, texts)
        reference = encoder.encode_text(texts[:16])
    own_row = f"| clipserve's own export | {base_images:.1f} | 1.00 | {base_texts:.0f} | 1.00 |"
    print(f"{own_row} dynamic, texts cut at the longest |")
    for name, arguments in sources.items():
        arguments = {k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()}
        with Encoder(batch_size=args.batch_size, **arguments) as encoder:
            same = float(np.min(np.sum(encoder.encode_text(texts[:16]) * reference, axis=1)))
            image_rate, text_rate = measure(encoder, images, texts)
            meta = json.loads((Path(str(encoder.info()["weights"])) / "clipserve.json").read_text())
        axis = "static (1)" if meta["batch"]["image"] else "dynamic"
        print(
            f"| {name} | {image_rate:.1f} | {image_rate / base_images:.2f} | {text_rate:.0f} | "
            f"{text_rate / base_texts:.2f} | {axis}, texts padded to 77 (min cosine {same:.6f}) |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
