"""The container images (the ``Dockerfile``), built and run here with podman as a user runs them.

The base is Debian's own packages (no registry answers here) and the images' dependencies come from
the wheels that ``make setup`` downloaded (``.containers/``): the builds run with no network. The
cpu image serves a tiny random export mounted read-only, on a read-only root file system, as a
non-root user, and its vectors equal the library's; its health check turns healthy and SIGTERM
drains a request in flight. The cuda image builds, and without a GPU stops at start with a clear
error instead of running on the CPU.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import AWKWARD_TEXTS, REPO, cosines
from tests.server_helpers import free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]

PODMAN = ["podman", "--runtime", "runc"]  # crun refuses this machine's hybrid cgroups
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]  # the sandbox's own caps
PREPARED = REPO / ".containers"
BASE = "localhost/debian-py:bookworm"


def podman(*arguments: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([*PODMAN, *arguments], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        said = done.stdout[-2000:] + done.stderr[-4000:]
        raise AssertionError(f"podman {' '.join(arguments)} failed:\n{said}")
    return done


def build(target: str) -> str:
    """The image of ``target``, built offline from the prepared base and wheels; its tag."""
    tag = f"localhost/clipserve-test:{target}"
    podman(
        "build", *LIMITS, "--network=none", "--format", "docker", "--target", target,
        "-v", f"{PREPARED / 'wheels'}:/wheels:ro", "--build-arg", f"BASE={BASE}",
        "--build-arg", "PIP_ARGS=--no-index --find-links /wheels", "-t", tag, str(REPO),
    )  # fmt: skip
    return tag


@pytest.fixture(scope="module")
def base_image() -> str:
    assert shutil.which("podman") and shutil.which("runc"), "`make setup` installs podman and runc"
    tarball = PREPARED / "debian-bookworm.tar"
    assert tarball.is_file() and (PREPARED / "wheels").is_dir(), (
        "`make setup` prepares .containers/ (the Debian base tarball and the images' wheels)"
    )
    if podman("image", "exists", BASE, check=False).returncode != 0:
        podman("import", str(tarball), BASE)
    return BASE


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """A tiny random open_clip model exported to ONNX, readable by the image's user."""
    from clipserve.encoder import Encoder
    from tests.tiny_models import FAMILIES, build_open_clip

    checkpoint = tmp_path_factory.mktemp("tiny-checkpoint")
    build_open_clip("worldwide", checkpoint)
    cache = tmp_path_factory.mktemp("tiny-cache")
    with Encoder(FAMILIES["worldwide"].zoo_name, weights=str(checkpoint), cache_dir=str(cache)) as encoder:
        exported = Path(encoder.info()["weights"])
    target = tmp_path_factory.mktemp("mounted") / "tiny"
    shutil.copytree(exported, target)
    for path in [target.parent, target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def test_the_cpu_image_serves_the_librarys_vectors_and_drains_on_sigterm(
    base_image, tiny_export, photo_paths
) -> None:
    from clipserve.encoder import Encoder

    image = build("cpu")
    port, name = free_port(), f"clipserve-test-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "--detach", "--name", name, *LIMITS, "--read-only", "--network=host",
        "-e", "CLIPSERVE_HOST=127.0.0.1", "-e", f"CLIPSERVE_PORT={port}",
        "-e", "CLIPSERVE_MODEL=/models/tiny", "-v", f"{tiny_export}:/models/tiny:ro", image,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        ready = _wait_ready(url, name)
        assert ready["backend"] == "onnx" and ready["device"] == "cpu" and ready["dim"] == 32
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        assert podman("exec", name, "touch", "/opt/written", check=False).returncode != 0, "root fs writable"
        assert podman("healthcheck", "run", name, check=False).returncode == 0
        health = podman("inspect", name, "--format", "{{.State.Health.Status}}").stdout.strip()
        assert health == "healthy"

        images = [base64.b64encode(p.read_bytes()).decode() for p in photo_paths]
        body = {"inputs": [{"image": i} for i in images] + [{"text": t} for t in AWKWARD_TEXTS]}
        answer = httpx.post(f"{url}/encode", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        served = np.asarray(answer.json()["embeddings"], np.float32)
        with Encoder(str(tiny_export)) as library:
            expected = np.concatenate(
                [library.encode([str(p) for p in photo_paths]), library.encode_text(AWKWARD_TEXTS)]
            )
        assert cosines(expected[:1], expected[1:2])[0] < 0.999, "the reference vectors do not differ"
        assert served.shape == expected.shape and cosines(served, expected).min() >= 0.99999

        texts = {"inputs": [{"text": t} for t in AWKWARD_TEXTS]}
        status, drained = _sigterm_during_request(port, name, texts)
        assert status == 200, drained
        drained_vectors = np.asarray(drained["embeddings"], np.float32)
        assert cosines(drained_vectors, expected[len(images) :]).min() >= 0.99999
        podman("wait", name, timeout=60)
        assert podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    finally:
        podman("rm", "--force", name, check=False)


def test_the_cuda_image_refuses_to_start_without_a_gpu(base_image, tiny_export) -> None:
    image = build("cuda")
    run = subprocess.run(
        [*PODMAN, "run", "--rm", *LIMITS, "--network=none", "-v", f"{tiny_export}:/models/tiny:ro",
         "-e", "CLIPSERVE_MODEL=/models/tiny", image],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0, run.stdout + run.stderr
    said = run.stdout + run.stderr
    assert "CUDAExecutionProvider" in said and "no GPU" in said and "refusing to run on the CPU" in said, said
    assert "Uvicorn running" not in said and "Traceback" not in said, said
    # CUDA and cuDNN from the image's pip packages are found; only the driver (the GPU's) is missing.
    assert "libcuda.so.1" in said and "libcublas" not in said and "libcudnn" not in said, said


def _wait_ready(url: str, name: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{url}/readyz", timeout=5)
            if answer.status_code == 200:
                return answer.json()
        except httpx.TransportError:
            pass
        if podman("inspect", name, "--format", "{{.State.Running}}").stdout.strip() != "true":
            break
        time.sleep(0.2)
    logs = podman("logs", name, check=False).stderr[-3000:]
    raise AssertionError(f"the container did not get ready:\n{logs}")


def _sigterm_during_request(port: int, name: str, body: dict) -> tuple[int, dict]:
    """Send ``body`` to ``/encode`` in two halves with SIGTERM to the container between them: the
    request is in flight (its headers read) when the server is told to stop. Returns its answer."""
    payload = json.dumps(body).encode()
    head = (
        f"POST /encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(head + payload[: len(payload) // 2])
        time.sleep(0.5)
        podman("kill", "--signal", "TERM", name)
        time.sleep(1.0)
        assert podman("inspect", name, "--format", "{{.State.Running}}").stdout.strip() == "true"
        connection.sendall(payload[len(payload) // 2 :])
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, content = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(content)
