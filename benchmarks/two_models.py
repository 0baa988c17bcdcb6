"""Two models in one server: what a second model costs, and what loading on demand and unloading
when idle buy.

Random-weight ViT-B-32 and RN50 exported to ONNX. Three servers on 127.0.0.1, one after the other:
1. ViT-B-32 alone, N clients of single images (the baseline);
2. both models preloaded, the same N clients, every other request to RN50;
3. both, RN50 lazy with ``--model-ttl``: the first RN50 request (it waits for the load), the RSS
   with RN50 loaded, and after it was unloaded for being idle.

Prints markdown tables: requests/s, latency p50/p95/p99 per model, server RSS.

    python benchmarks/two_models.py [--clients 32] [--requests 256]
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import uvloop
from photos import jpeg_photos
from serving import cpu_description, drive, random_export, rss_mib, server_process

VIT, RN50 = "ViT-B-32::openai", "RN50::openai"
TTL_S = 5
JSON = {"Content-Type": "application/json"}


def body(image: bytes, model: str) -> bytes:
    return json.dumps({"inputs": [{"image": base64.b64encode(image).decode()}], "model": model}).encode()


def percentiles(latencies: list[float]) -> str:
    return " / ".join(f"{np.percentile(latencies, q):.0f}" for q in (50, 95, 99))


def wait_for_state(url: str, model: str, state: str, keep_busy: str, timeout_s: float = 60) -> None:
    """Wait until ``model`` is in ``state``, sending a text to ``keep_busy`` meanwhile (it stays loaded)."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/readyz").json()["models"][model]["state"] != state:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{model} did not become {state}")
        text = {"inputs": [{"text": "keep me loaded"}], "model": keep_busy}
        httpx.post(f"{url}/encode", json=text, timeout=60).raise_for_status()
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256, help="image requests per run")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="clipserve-two-"))
    exports = {name: random_export(workdir, args.precision, name) for name in (VIT, RN50)}
    images = jpeg_photos()
    both = [f"--model={name}={exports[name]}" for name in (VIT, RN50)]
    common = ("--precision", args.precision, "--max-queue", "100000")
    print(
        f"{time.strftime('%Y-%m-%d')}, {cpu_description()}; onnx {args.precision}; {args.clients} clients\n"
    )
    print("| server | requests/s | ViT-B-32 p50/95/99 ms | RN50 p50/95/99 ms | RSS after MiB |")
    print("| --- | ---: | --- | --- | ---: |")
    runs = (
        ("ViT-B-32 alone", [VIT], [f"--model={VIT}={exports[VIT]}"]),
        ("both, alternating", [VIT, RN50], both),
    )
    for title, models, flags in runs:
        with server_process(None, *flags, *common, "--preload") as (url, server):
            port = int(url.rsplit(":", 1)[1])
            work = [
                (models[i % len(models)], "/encode", body(images[i % len(images)], models[i % len(models)]))
                for i in range(args.requests)
            ]
            uvloop.run(drive(port, work[:16], 4))  # warm-up
            outcome = uvloop.run(drive(port, work, args.clients))
            if set(outcome.statuses) != {200}:
                raise RuntimeError(f"the server answered {sorted(set(outcome.statuses))}")
            by_model = {
                m: [t for t, k in zip(outcome.latencies_ms, outcome.kinds, strict=True) if k == m]
                for m in models
            }
            print(
                f"| {title} | {args.requests / outcome.seconds:.1f} | {percentiles(by_model[VIT])} | "
                f"{percentiles(by_model[RN50]) if RN50 in by_model else '–'} | {rss_mib(server.pid)[0]:.0f} |"
            )

    print(f"\nRN50 loaded on first use, unloaded after {TTL_S} s idle (`--model-ttl {TTL_S}`):\n")
    print("| step | RSS MiB | time ms |")
    print("| --- | ---: | ---: |")
    with server_process(None, *both, *common, "--model-ttl", str(TTL_S)) as (url, server):
        rows = [("ViT-B-32 loaded, RN50 not", rss_mib(server.pid)[0], None)]
        start = time.perf_counter()
        answer = httpx.post(url + "/encode", content=body(images[0], RN50), headers=JSON, timeout=300)
        answer.raise_for_status()
        rows.append(
            ("first RN50 request (loads it)", rss_mib(server.pid)[0], (time.perf_counter() - start) * 1000)
        )
        start = time.perf_counter()
        httpx.post(
            url + "/encode", content=body(images[1], RN50), headers=JSON, timeout=300
        ).raise_for_status()
        rows.append(("second RN50 request", rss_mib(server.pid)[0], (time.perf_counter() - start) * 1000))
        wait_for_state(url, RN50, "unloaded", keep_busy=VIT)
        rows.append(("RN50 unloaded after idling (ViT-B-32 kept busy)", rss_mib(server.pid)[0], None))
        for step, rss, ms in rows:
            print(f"| {step} | {rss:.0f} | {'' if ms is None else f'{ms:.0f}'} |")


if __name__ == "__main__":
    main()
