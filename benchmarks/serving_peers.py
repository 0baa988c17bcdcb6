"""Server peers: clipserve's server against infinity-emb's, N clients each sending single items.

Both serve ViT-B-32 with random weights on 127.0.0.1, one after the other (each stopped before the
next starts), driven by the same load generator as ``server_load.py`` (``serving.drive``: keep-alive
connections, one item per request) with OpenAI-shaped bodies: single JPEG photos as data URIs, then
single captions of 3 to 20 words.

- clipserve: ``clipserve serve`` (its defaults: ONNX Runtime fp32) on a random open_clip checkpoint
  exported to ONNX, ``POST /v1/embeddings``;
- infinity: ``infinity_emb v2 --engine torch --device cpu`` (its defaults otherwise) on a random
  transformers ``CLIPModel`` with ViT-B-32's configuration and its ``CLIPProcessor`` (CLIP's image
  processor and tokenizer, from local files), ``POST /embeddings``, images with
  ``"modality": "image"``.

infinity-emb runs from a venv of its own (it needs numpy < 2 and transformers < 5), named by
``--infinity-venv`` (default ``$CLIPSERVE_INFINITY_VENV`` or /work/peers/infinity-venv), made with

    python3.11 -m venv DIR && DIR/bin/pip install torch==2.14.1 torchvision==0.29.1
    DIR/bin/pip install "infinity-emb[server,torch]" pillow timm aiohttp torch==2.14.1 torchvision==0.29.1

(its ``[all]`` extra pulls colpali-engine, which takes torch back to 2.8). Prints items/s, latency
p50/95/99, CPU of server and clients (100 % = one core; they share the machine), the server's peak
RSS, and clipserve's rate over infinity's.

    python benchmarks/serving_peers.py [--clients 16] [--requests 256] [--text-requests 1024]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import transformers
import uvloop
from cpu_encode import captions, hf_tokenizer_dir, hf_vit_b_32_dir
from photos import jpeg_photos
from serving import (
    MODEL,
    cpu_description,
    cpu_seconds,
    drive,
    free_port,
    random_export,
    rss_mib,
    server_process,
)

INFINITY_VENV = os.environ.get("CLIPSERVE_INFINITY_VENV", "/work/peers/infinity-venv")
Request = tuple[str, str, bytes]


def infinity_model_dir(workdir: Path) -> Path:
    """A random ``CLIPModel`` with ViT-B-32's configuration and its ``CLIPProcessor``, saved as infinity
    loads them (``AutoModel``, ``AutoProcessor``)."""
    target = hf_vit_b_32_dir(workdir)
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(hf_tokenizer_dir(workdir), model_max_length=77)
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(), tokenizer=tokenizer
    )
    processor.save_pretrained(target)
    return target


def installed(venv: Path, package: str) -> str:
    """The version of ``package`` installed in ``venv``."""
    found = next((venv / "lib").glob(f"python*/site-packages/{package}-*.dist-info"), None)
    return found.name.removesuffix(".dist-info").split("-")[1] if found else "?"


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def infinity_server(venv: Path, model_dir: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """``infinity_emb v2`` (torch, CPU) serving ``model_dir`` on 127.0.0.1, without telemetry or hub;
    yields ``(port, Popen)`` once ``/health`` answers."""
    port = free_port()
    command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_dir), "--engine", "torch"]
    command += ["--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
    # The log goes to a file: a pipe nobody reads would fill up and block the server.
    with (
        tempfile.TemporaryFile() as log,
        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env) as process,
    ):
        try:
            deadline = time.monotonic() + 300
            while not answers(f"http://127.0.0.1:{port}/health"):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"infinity did not start: {log.read().decode()[-3000:]}")
                time.sleep(0.2)
            yield port, process
        finally:
            process.terminate()
            process.wait(30)


def measure(port: int, pid: int, requests: list[Request], clients: int) -> dict[str, float]:
    """``requests`` over ``clients`` connections, after a warm-up whose answers are checked (one
    512-dimensional vector each): items/s, latency percentiles (ms), CPU of the server and of the
    clients."""
    warm = uvloop.run(drive(port, requests[:16], 4, keep_bodies=True))
    for status, body in zip(warm.statuses, warm.bodies, strict=True):
        if status != 200 or len(json.loads(body)["data"][0]["embedding"]) != 512:
            raise RuntimeError(f"the server answered {status}: {body[:500]!r}")
    server, client = cpu_seconds(pid), cpu_seconds()
    outcome = uvloop.run(drive(port, requests, clients))
    if set(outcome.statuses) != {200}:
        raise RuntimeError(f"the server answered {sorted(set(outcome.statuses))}")
    p50, p95, p99 = (np.percentile(outcome.latencies_ms, q) for q in (50, 95, 99))
    return {
        "rate": len(requests) / outcome.seconds,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "cpu_server": (cpu_seconds(pid) - server) / outcome.seconds,
        "cpu_client": (cpu_seconds() - client) / outcome.seconds,
    }


def compare(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, dict[str, dict]], dict[str, float]]:
    """Each server in turn under the load: ``{server: {items: measures}}`` and ``{server: peak RSS}``."""
    onnx_dir, model_dir = random_export(workdir), infinity_model_dir(workdir)
    photos, texts = jpeg_photos(), captions(args.text_requests, 3, 20, seed=1)
    uris = [f"data:image/jpeg;base64,{base64.b64encode(photo).decode()}" for photo in photos]

    def requests(path: str, image_fields: dict) -> dict[str, list[Request]]:
        images = [uris[i % len(uris)] for i in range(args.requests)]
        return {
            "image": [("image", path, json.dumps({"input": [u], **image_fields}).encode()) for u in images],
            "text": [("text", path, json.dumps({"input": [t]}).encode()) for t in texts],
        }

    results: dict[str, dict[str, dict[str, float]]] = {}
    peaks: dict[str, float] = {}

    def run(name: str, port: int, pid: int, work: dict[str, list[Request]]) -> None:
        results[name] = {items: measure(port, pid, work[items], args.clients) for items in work}
        peaks[name] = rss_mib(pid)[1]

    with server_process(onnx_dir, "--max-queue", "100000") as (url, server):
        run("clipserve", int(url.rsplit(":", 1)[1]), server.pid, requests("/v1/embeddings", {}))
    with infinity_server(args.infinity_venv, model_dir) as (port, server):
        run("infinity", port, server.pid, requests("/embeddings", {"modality": "image"}))
    return results, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=256, help="single-image requests per server")
    parser.add_argument("--text-requests", type=int, default=1024, help="single-caption requests per server")
    parser.add_argument(
        "--infinity-venv",
        type=Path,
        default=Path(INFINITY_VENV),
        help="a venv with infinity-emb installed (default: $CLIPSERVE_INFINITY_VENV or %(default)s)",
    )
    args = parser.parse_args()
    if not (args.infinity_venv / "bin" / "infinity_emb").exists():
        raise SystemExit(
            f"infinity-emb is missing: no {args.infinity_venv}/bin/infinity_emb. Make the venv as this "
            "script's docstring says, or name yours with --infinity-venv or CLIPSERVE_INFINITY_VENV."
        )

    with tempfile.TemporaryDirectory(prefix="clipserve-peers-") as workdir:
        results, peaks = compare(args, Path(workdir))

    venv = args.infinity_venv
    print(
        f"{time.strftime('%Y-%m-%d')}, {cpu_description()}; {MODEL} (random weights): clipserve onnx fp32, "
        f"infinity-emb {installed(venv, 'infinity_emb')} torch {installed(venv, 'torch')} fp32 on CPU; "
        f"{args.clients} clients, single items: {args.requests} images, {args.text_requests} captions each; "
        "servers and clients share the machine\n"
    )
    print("| server | items | items/s | latency ms p50/95/99 | CPU server / clients | server RSS peak MiB |")
    print("| --- | --- | ---: | --- | --- | ---: |")
    for server_name, rows in results.items():
        for name, r in rows.items():
            print(
                f"| {server_name} | {name} | {r['rate']:.1f} "
                f"| {r['p50']:.0f} / {r['p95']:.0f} / {r['p99']:.0f} "
                f"| {r['cpu_server']:.0%} / {r['cpu_client']:.0%} | {peaks[server_name]:.0f} |"
            )
    ratios = {
        name: results["clipserve"][name]["rate"] / results["infinity"][name]["rate"]
        for name in ("image", "text")
    }
    print(f"\nclipserve / infinity: images {ratios['image']:.2f}×, captions {ratios['text']:.2f}×")


if __name__ == "__main__":
    main()
