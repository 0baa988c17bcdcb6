"""The README's first install line, as a new user runs it: ``pip install 'clipserve[server]'`` (the
``.venv-light`` environment of ``make setup``: no torch, no transformers, no open_clip), then the
quickstart's ``clipserve serve --model ViT-B-32::openai``. Its weights come from immich's published
ONNX graphs (a pre-filled hub cache standing in for the hub), and its vectors equal open_clip's of
the same weights; so do the library's there from clip-as-service's files and fastembed's repos."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from clipserve.backends.published import immich_repo
from clipserve.zoo import get_spec
from tests.conftest import AWKWARD_TEXTS, REPO, cosines
from tests.published_layouts import (
    clip_as_service_layout,
    fastembed_layout,
    immich_layout,
    prefill_hub_cache,
)
from tests.server_helpers import free_port

NAME = "ViT-B-32::openai"
LIGHT = REPO / ".venv-light"


@pytest.mark.slow
def test_the_quickstart_serves_immichs_graphs_without_torch(random_model, photo_paths, tmp_path) -> None:
    python = LIGHT / "bin" / "python"
    assert python.is_file(), "`make setup` builds .venv-light (pip install '.[server]')"
    absent = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print([m for m in ('torch', 'open_clip', "
         "'transformers', 'torchvision') if u.find_spec(m)])"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    model = random_model(NAME)
    prefill_hub_cache(
        immich_layout(model.model, "ViT-B-32", tmp_path / "ViT-B-32__openai"),
        immich_repo(get_spec(NAME)),
        tmp_path / "cache" / "hub",
    )
    port = free_port()
    env = {**os.environ, "CLIPSERVE_CACHE_DIR": str(tmp_path / "cache"), "CLIPSERVE_OFFLINE": "1"}
    del env["CLIPSERVE_BACKEND"]  # the default, auto: without torch, the rules leave ONNX Runtime
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [str(LIGHT / "bin" / "clipserve"), "serve", "--model", NAME, "--port", str(port)],
            stdout=log, stderr=log, env=env,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            ready = _wait_ready(url, server, log)
            assert ready["published_by"] == "immich" and ready["published_repo"] == immich_repo(
                get_spec(NAME)
            )
            assert ready["licence"] == "MIT"
            assert ready["backend"] == "onnx" and ready["backend_choice"]["how"] == "only one"
            images = [base64.b64encode(p.read_bytes()).decode() for p in photo_paths]
            body = {"inputs": [{"image": i} for i in images] + [{"text": t} for t in AWKWARD_TEXTS]}
            answer = httpx.post(f"{url}/encode", json=body, timeout=300)
            assert answer.status_code == 200, answer.text
            vectors = np.asarray(answer.json()["embeddings"], np.float32)
        finally:
            server.terminate()
            server.wait(30)
    expected = np.concatenate(
        [model.image_vectors([Image.open(p) for p in photo_paths]), model.text_vectors(AWKWARD_TEXTS)]
    )
    assert cosines(vectors, expected).min() >= 0.99999
    for source, vectors in _other_publishers(model, photo_paths, tmp_path, env).items():
        assert cosines(vectors, expected).min() >= 0.99999, source


LIBRARY = """
import json, sys
import numpy as np
from clipserve.encoder import Encoder

photos, texts, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
for source in ("clip-as-service", "fastembed"):
    with Encoder("ViT-B-32::openai", source=source) as encoder:
        assert encoder.info()["published_by"] == source
        np.save(f"{out}/{source}.npy", np.concatenate([encoder.encode(photos), encoder.encode_text(texts)]))
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "transformers")]
"""


def _other_publishers(model, photo_paths, tmp_path, env: dict) -> dict[str, np.ndarray]:
    """clip-as-service's files (in the cache, as a finished download leaves them) and fastembed's
    repos (a pre-filled hub cache) of the same weights, read by the library in the light install."""
    cached = tmp_path / "cache" / "published" / "clip-as-service" / "ViT-B-32"
    clip_as_service_layout(model.model, 224, cached)
    fastembed_layout(model.model, tmp_path / "vision", tmp_path / "text")
    for part in ("vision", "text"):
        prefill_hub_cache(tmp_path / part, f"Qdrant/clip-ViT-B-32-{part}", tmp_path / "cache" / "hub")
    photos, texts = json.dumps([str(p) for p in photo_paths]), json.dumps(AWKWARD_TEXTS)
    run = subprocess.run(
        [str(LIGHT / "bin" / "python"), "-c", LIBRARY, photos, texts, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return {source: np.load(tmp_path / f"{source}.npy") for source in ("clip-as-service", "fastembed")}


def _wait_ready(url: str, server: subprocess.Popen, log) -> dict:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and server.poll() is None:
        try:
            answer = httpx.get(f"{url}/readyz", timeout=5)
            if answer.status_code == 200:
                return answer.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    log.seek(0)
    raise AssertionError(f"the light install's server did not get ready:\n{log.read().decode()[-3000:]}")
