"""Hugging Face transformers checkpoints: clipserve against transformers' own pipeline, one run.

A ViT-B/32-sized ``CLIPModel`` with random weights (transformers' default ``CLIPConfig``) is saved
with ``save_pretrained``, with CLIP's tokenizer and a CLIP image processor, as a fine-tune would be.
Then, in this process:

- transformers: its processor (the PIL backend, and the default torchvision one) and
  ``get_image_features`` / its tokenizer and ``get_text_features``, in batches of 32, torch fp32;
- clipserve ``Encoder(directory)`` on the torch backend (transformers' modules, clipserve's
  preprocessing and batching) and on ONNX Runtime (fp32, and int8).

Images are the shared photos (PNG and JPEG, 300 to 1000 px) read from bytes; texts are captions
of a few words and of about 60 tokens. The ratio is against transformers with its PIL processor.

    python benchmarks/hf_models.py [--images 96] [--texts 512]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from serving import cpu_description

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' tokenizer builder
from clipserve.encoder import Encoder
from tests.conftest import SHARED_PHOTOS
from tests.hf_models import clip_tokenizer

BATCH = 32


def model_directory(root: Path) -> Path:
    directory = root / "clip-vit-b-32-random"
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig())
    directory.mkdir(parents=True)
    tokenizer = clip_tokenizer(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(directory)
    return directory


def inputs(images: int, texts: int) -> tuple[list[bytes], list[str]]:
    with open(SHARED_PHOTOS / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    photos = [(SHARED_PHOTOS / row["file"]).read_bytes() for row in rows]
    captions = [row["caption"] for row in rows]
    long = [" ".join([caption] * 6) for caption in captions]
    return (photos * images)[:images], ((captions + long) * texts)[:texts]


def timed(run) -> tuple[float, np.ndarray]:
    run()  # warm
    start = time.perf_counter()
    vectors = run()
    return time.perf_counter() - start, vectors


def transformers_images(model, processor, photos: list[bytes]) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(photos), BATCH):
            images = [Image.open(io.BytesIO(b)) for b in photos[start : start + BATCH]]
            features = model.get_image_features(**processor(images=images, return_tensors="pt"))
            out.append(features.pooler_output.numpy())
    vectors = np.concatenate(out)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def transformers_texts(model, tokenizer, texts: list[str]) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(
                texts[start : start + BATCH], padding=True, truncation=True, return_tensors="pt"
            )
            out.append(model.get_text_features(**batch).pooler_output.numpy())
    vectors = np.concatenate(out)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--texts", type=int, default=512)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="clipserve-hf-bench-"))
    directory = model_directory(root)
    photos, texts = inputs(args.images, args.texts)
    model = transformers.CLIPModel.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    rows = []
    for label, backend in (("PIL", "pil"), ("torchvision (default)", "torchvision")):
        processor = transformers.AutoImageProcessor.from_pretrained(directory, backend=backend)
        seconds, vectors = timed(lambda processor=processor: transformers_images(model, processor, photos))
        rows.append((f"transformers, {label} processor", "images", seconds, vectors))
    seconds, vectors = timed(lambda: transformers_texts(model, tokenizer, texts))
    rows.append(("transformers", "texts", seconds, vectors))
    reference = {"images": rows[0][3], "texts": rows[2][3]}
    for label, options in (
        ("clipserve torch", {"backend": "torch"}),
        ("clipserve onnx fp32", {"backend": "onnx"}),
        ("clipserve onnx int8", {"backend": "onnx", "precision": "int8"}),
    ):
        with Encoder(str(directory), cache_dir=root / "cache", **options) as encoder:
            seconds, vectors = timed(lambda encoder=encoder: encoder.encode_image(photos))
            rows.append((label, "images", seconds, vectors))
            seconds, vectors = timed(lambda encoder=encoder: encoder.encode_text(texts))
            rows.append((label, "texts", seconds, vectors))
    threads = torch.get_num_threads()
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_description()}, torch {torch.__version__} ({threads} threads)")
    print(f"{len(photos)} photos from bytes, {len(texts)} texts; ViT-B/32-sized CLIPModel, random weights\n")
    print("| pipeline | input | per second | × transformers (PIL) | cosine to transformers (PIL) |")
    print("| --- | --- | ---: | ---: | ---: |")
    base = {kind: next(s for _, k, s, _ in rows if k == kind) for kind in ("images", "texts")}
    for label, kind, seconds, vectors in rows:
        count = len(photos) if kind == "images" else len(texts)
        cosine = float((vectors * reference[kind]).sum(axis=1).min())
        print(f"| {label} | {kind} | {count / seconds:.1f} | {base[kind] / seconds:.2f} | {cosine:.6f} |")
    print(json.dumps({"model": str(directory)}))


if __name__ == "__main__":
    main()
