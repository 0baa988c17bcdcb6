"""First-request latency with and without the warm-up on load (ViT-B-32, random weights, ONNX).

For the library (an ``Encoder`` per run, in a fresh process each: a process's first session pays
for more than a later one's) and for the server (``clipserve serve`` in a subprocess, timed from the
moment ``/readyz`` answers 200): the load time, the first request of one photo and of one caption,
and the same request once more (steady state). Medians over ``--runs`` fresh processes.

    python benchmarks/first_request.py [--runs 3] [--precision fp32]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from photos import jpeg_photos
from serving import MODEL, cpu_description, random_export, server_process

CAPTION = "a photo of two dogs running on a beach"


def library_once(weights: str, warmup: bool) -> dict[str, float]:
    """One fresh process: load, then each request twice; milliseconds."""
    code = f"""
import json, time, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from photos import jpeg_photos
from clipserve.encoder import Encoder
photo = jpeg_photos(1)[0]
start = time.perf_counter()
encoder = Encoder({MODEL!r}, weights={weights!r}, warmup={warmup!r})
times = {{"load": time.perf_counter() - start}}
calls = {{"image": lambda: encoder.encode_image([photo]), "text": lambda: encoder.encode_text([{CAPTION!r}])}}
for name, call in calls.items():
    for attempt in ("first", "second"):
        start = time.perf_counter()
        call()
        times[f"{{name}} {{attempt}}"] = time.perf_counter() - start
print(json.dumps({{k: v * 1000 for k, v in times.items()}}))
"""
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def server_once(weights: str, warmup: bool) -> dict[str, float]:
    """One fresh server: from start to ready, then each request twice; milliseconds."""
    photo = base64.b64encode(jpeg_photos(1)[0]).decode()
    bodies = {"image": {"inputs": [{"image": photo}]}, "text": {"inputs": [{"text": CAPTION}]}}
    start = time.perf_counter()
    env = {"CLIPSERVE_WARMUP": "1" if warmup else "0"}
    with server_process(weights, env=env) as (url, _):
        while httpx.get(f"{url}/readyz").status_code != 200:
            time.sleep(0.05)
        times = {"load": time.perf_counter() - start}
        with httpx.Client(timeout=60) as client:
            for name, body in bodies.items():
                for attempt in ("first", "second"):
                    sent = time.perf_counter()
                    client.post(f"{url}/encode", json=body).raise_for_status()
                    times[f"{name} {attempt}"] = time.perf_counter() - sent
    return {k: v * 1000 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clipserve-first-"))
    weights = random_export(workdir)
    os.environ.setdefault("CLIPSERVE_CACHE_DIR", str(workdir))
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_description()}; {MODEL} (random weights), ONNX fp32")
    print(f"medians of {args.runs} fresh processes, ms\n")
    columns = ["load", "image first", "image second", "text first", "text second"]
    print("| face | warm-up | " + " | ".join(columns) + " |")
    print("| --- | --- |" + " ---: |" * len(columns))
    for face, once in (("library", library_once), ("server", server_once)):
        for warmup in (False, True):
            runs = [once(weights, warmup) for _ in range(args.runs)]
            cells = " | ".join(f"{statistics.median(r[c] for r in runs):.0f}" for c in columns)
            print(f"| {face} | {'on' if warmup else 'off'} | {cells} |")


if __name__ == "__main__":
    main()
