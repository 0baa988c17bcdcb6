"""Start-up of the cpu image against `clipserve serve` on the host, on the same export.

Each run starts the server with a ViT-B-32 export (random weights, real size) mounted, and times
``run`` to the first 200 from ``/readyz`` and to the first passing health check; then the
server's resident memory. The baseline is ``clipserve serve`` of this checkout, on the host, the
same export. The image comes from ``make test`` (tests/test_containers.py) or from ``--image``.

    .venv/bin/python benchmarks/container_start.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import cpu_description, free_port, random_export, rss_mib

PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def wait_ready(port: int, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"no /readyz on port {port} within {deadline_s} s")


def container_run(image: str, export: Path) -> dict:
    port, name = free_port(), f"clipserve-bench-{free_port()}"
    start = time.monotonic()
    subprocess.run(
        [*PODMAN, "run", "--detach", "--name", name, *LIMITS, "--read-only", "--network=host",
         "-e", "CLIPSERVE_HOST=127.0.0.1", "-e", f"CLIPSERVE_PORT={port}", "-e", "CLIPSERVE_MODEL=/models/m",
         "-v", f"{export}:/models/m:ro", image],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        wait_ready(port)
        ready = time.monotonic() - start
        while subprocess.run([*PODMAN, "healthcheck", "run", name], capture_output=True).returncode != 0:
            time.sleep(0.05)
        healthy = time.monotonic() - start
        usage = subprocess.run(
            [*PODMAN, "stats", "--no-stream", "--format", "{{.MemUsageBytes}}", name],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        return {"ready": ready, "healthy": healthy, "memory": usage.split("/")[0].strip()}
    finally:
        subprocess.run([*PODMAN, "rm", "--force", name], capture_output=True)


def host_run(export: Path) -> dict:
    port = free_port()
    start = time.monotonic()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "clipserve"), "serve", "--model", str(export),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(port)
        ready = time.monotonic() - start
        return {"ready": ready, "healthy": ready, "memory": f"{rss_mib(server.pid)[0]:.0f}MiB"}
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="localhost/clipserve-test:cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "clipserve-bench-export"
    )
    args = parser.parse_args()
    args.workdir.mkdir(exist_ok=True)
    export = Path(random_export(args.workdir))
    for path in [export, *export.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    size = subprocess.run(
        [*PODMAN, "image", "inspect", "--format", "{{.Size}}", args.image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"CPU: {cpu_description()}; image {args.image}: {int(size) / 1e6:.0f} MB uncompressed")
    runs = {"clipserve serve (host)": [host_run(export) for _ in range(args.runs)]}
    runs["cpu image (podman)"] = [container_run(args.image, export) for _ in range(args.runs)]
    baseline = statistics.median(r["ready"] for r in runs["clipserve serve (host)"])
    print("| ViT-B-32 export mounted | ready p50 (s) | ready max (s) | healthy p50 (s) | memory | × host |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for what, results in runs.items():
        ready = [r["ready"] for r in results]
        print(
            f"| {what} | {statistics.median(ready):.2f} | {max(ready):.2f} | "
            f"{statistics.median(r['healthy'] for r in results):.2f} | {results[-1]['memory']} | "
            f"{statistics.median(ready) / baseline:.2f} |"
        )


if __name__ == "__main__":
    main()
