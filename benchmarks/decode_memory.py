"""How much memory decoding bombs take in a server of two models: the decode budget's bound, measured.

Serves random ViT-B-32 and RN50 (ONNX fp32) in one ``clipserve serve``, warms both up, then sends
``--clients`` concurrent requests of one 7000 x 7000 image each (49 megapixels in a few bytes to a
few megabytes), alternating between the models, for each kind of image and each ``max_decode_mb``.
The table gives the server's peak RSS over its warm RSS: what the decodes held at once, with the
request bodies and prepared crops around them.

    python benchmarks/decode_memory.py [--clients 16] [--budgets 1024,512]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image
from serving import cpu_description, drive, random_export, rss_mib, server_process

MODELS = ("ViT-B-32::openai", "RN50::openai")
SIDE = 7000


def images() -> dict[str, bytes]:
    base = Image.new("RGB", (SIDE, SIDE), (120, 30, 200))
    out = {}
    for name, image, options in (
        ("lossless WebP", base.convert("RGBA"), {"format": "WEBP", "lossless": True}),
        ("AVIF", base, {"format": "AVIF", "quality": 50}),
        ("CMYK JPEG", base.convert("CMYK"), {"format": "JPEG"}),
        ("progressive JPEG", base, {"format": "JPEG", "progressive": True}),
    ):
        buffer = io.BytesIO()
        image.save(buffer, **options)
        out[name] = buffer.getvalue()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--budgets", default="1024,512")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clipserve-decode-memory-"))
    exports = {name: random_export(workdir, model=name) for name in MODELS}
    bombs = images()
    rows = []
    for budget in [float(b) for b in args.budgets.split(",")]:
        flags = ["--preload", "--max-decode-mb", str(budget)]
        for name, path in exports.items():
            flags += ["--model", f"{name}={path}"]
        for kind, data in bombs.items():
            with server_process(None, *flags) as (url, process):
                for name in MODELS:  # warm: each model's threads, arenas and sessions in use once
                    httpx.post(
                        f"{url}/encode", json={"inputs": [{"text": "warm"}], "model": name}, timeout=60
                    )
                warm = rss_mib(process.pid)[0]
                requests = [
                    (
                        kind,
                        "/encode",
                        json.dumps(
                            {"inputs": [{"image": base64.b64encode(data).decode()}], "model": MODELS[i % 2]}
                        ).encode(),
                    )
                    for i in range(args.clients)
                ]
                start = time.perf_counter()
                outcome = asyncio.run(drive(int(url.rsplit(":", 1)[1]), requests, args.clients))
                seconds = time.perf_counter() - start
                peak = rss_mib(process.pid)[1]
                ok = sum(1 for s in outcome.statuses if s == 200)
                rows.append((budget, kind, len(data), ok, seconds, warm, peak))
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_description()}; {args.clients} concurrent requests, 2 models")
    columns = ["max_decode_mb", "image (7000 x 7000)", "bytes", "200s", "s", "warm RSS MiB", "peak RSS MiB"]
    print("\n| " + " | ".join([*columns, "peak − warm"]) + " |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for budget, kind, size, ok, seconds, warm, peak in rows:
        print(
            f"| {budget:.0f} | {kind} | {size:,} | {ok}/{args.clients} | {seconds:.1f} | {warm:.0f} | "
            f"{peak:.0f} | {peak - warm:.0f} |"
        )


if __name__ == "__main__":
    main()
