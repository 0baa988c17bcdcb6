"""Shared fixtures: the shared photos, random-weight open_clip checkpoints, and encoders on them.

No test reaches the network: downloads are switched off for the whole session, and the only
server a test talks to listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared" / "data" / "photos"

AWKWARD_TEXTS = [
    "a photo of a cat",
    "",
    "dog",
    "   ",
    "Ünïcödé naïve café — 東京タワー, Привет мир",
    "emoji 🐱🚀👨‍👩‍👧 🏳️‍🌈",
    "word " * 120,  # far beyond 77 tokens
    "&amp;lt;b&amp;gt;html&lt;/b&gt; entities",
    "mojibake: cafÃ©",
    "It's 12:30 — can't we'll they've",
    "<start_of_text> literal special tokens <end_of_text>",
    "tabs\tand\nnew\r\nlines",
]

collect_ignore = [] if os.environ.get("CLIPSERVE_JINA_TESTS") else ["jina"]
"""``tests/jina`` runs inside the Jina environments, started by ``tests/test_jina.py`` with the models."""

os.environ["CLIPSERVE_OFFLINE"] = "1"
# Before Ray is imported: a single-node Ray then addresses and listens on 127.0.0.1 only (it reads
# the node address once, at import), and sends no usage statistics.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["HF_HUB_OFFLINE"] = "1"
# A test that does not name its backend runs on ONNX Runtime. The default, backend="auto", measures
# both engines on a first load and keeps the faster: on a loaded CI machine that could differ from
# run to run, and a test of something else must not. tests/test_backend_choice.py tests "auto".
os.environ["CLIPSERVE_BACKEND"] = "onnx"


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    if not (SHARED_PHOTOS / "labels.csv").is_file():
        pytest.fail(
            f"the shared photos are missing: expected {SHARED_PHOTOS}/labels.csv beside the repository"
        )
    return SHARED_PHOTOS


@pytest.fixture(scope="session")
def photo_paths(photos_dir: Path) -> list[Path]:
    with open(photos_dir / "labels.csv") as f:
        return [photos_dir / row["file"] for row in csv.DictReader(f)]


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clipserve-cache")


def open_clip_transform(spec):
    """open_clip's own eval transform for a zoo entry: the reference for preprocessing."""
    import open_clip

    return open_clip.image_transform(
        spec.image_size[0],
        is_train=False,
        mean=spec.mean,
        std=spec.std,
        resize_mode=spec.resize_mode,
        interpolation=spec.interpolation,
    )


class RandomModel:
    """An open_clip model with random weights, saved as a checkpoint file."""

    def __init__(self, name: str, directory: Path) -> None:
        import open_clip
        import torch

        from clipserve.zoo import get_spec

        self.spec = get_spec(name)
        torch.manual_seed(1234)
        self.model = open_clip.create_model(self.spec.arch, force_quick_gelu=self.spec.quick_gelu).eval()
        self.checkpoint = directory / f"{self.spec.arch}.pt"
        torch.save(self.model.state_dict(), self.checkpoint)
        self.transform = open_clip_transform(self.spec)
        self.tokenizer = open_clip.get_tokenizer(self.spec.arch)

    def image_vectors(self, images) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model.encode_image(torch.stack([self.transform(im) for im in images])).numpy()
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model.encode_text(self.tokenizer(texts)).numpy()
        return out / np.linalg.norm(out, axis=1, keepdims=True)


_MODELS: dict[str, RandomModel] = {}


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory):
    """``random_model(name)``: a random-weight open_clip model of that zoo entry, built once."""

    def get(name: str) -> RandomModel:
        if name not in _MODELS:
            _MODELS[name] = RandomModel(name, tmp_path_factory.mktemp("weights"))
        return _MODELS[name]

    return get


@contextlib.contextmanager
def built_once() -> Iterator[Callable[..., object]]:
    """``get(*args, **kwargs)``: one Encoder per distinct arguments, built on first use; all of
    them are closed on exit (a fixture's scope)."""
    from clipserve.encoder import Encoder

    built: dict[str, Encoder] = {}

    def get(*args, **kwargs) -> Encoder:
        key = repr((args, sorted(kwargs.items())))
        if key not in built:
            built[key] = Encoder(*args, **kwargs)
        return built[key]

    try:
        yield get
    finally:
        for encoder in built.values():
            encoder.close()


@pytest.fixture
def new_encoder():
    """``new_encoder(*args, **kwargs)``: a new Encoder, closed when the test ends."""
    from clipserve.encoder import Encoder

    with contextlib.ExitStack() as opened:
        yield lambda *args, **kwargs: opened.enter_context(Encoder(*args, **kwargs))


@pytest.fixture(scope="session")
def encoder_for(random_model, cache_root: Path):
    """``encoder_for(name, backend)``: an Encoder on the random checkpoint, built once per session."""
    with built_once() as get:
        yield lambda name, backend: get(
            name, backend=backend, weights=random_model(name).checkpoint, cache_dir=cache_root, batch_size=4
        )


@pytest.fixture(scope="session")
def onnx_export(encoder_for) -> Callable[[str], str]:
    """``onnx_export(name)``: the ONNX export directory of the random checkpoint of ``name``."""
    return lambda name: encoder_for(name, "onnx").info()["weights"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


class _FileHandler(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def loopback_files():
    """An HTTP server on 127.0.0.1 serving ``files`` (path → bytes): yields ``(base_url, files)``."""
    files: dict[str, bytes] = {}
    handler = type("Handler", (_FileHandler,), {"files": files})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs on 127.0.0.1 (one per test module), with clipserve's proxy middleware."""
    import ray

    from clipserve.ray.serve import PROXY_ENV

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"CLIPSERVE_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **PROXY_ENV}},
    )
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def cache_with_exports(onnx_export, cache_root: Path, tmp_path_factory) -> Callable[..., Path]:
    """``cache_with_exports(*names)``: a new cache holding copies of the session's fp32 exports of
    the random checkpoints of ``names``, where they are found for those checkpoints: a test of
    int8 or of the cache itself starts there, without exporting again (~30 s a model)."""

    def make(*names: str) -> Path:
        cache = tmp_path_factory.mktemp("cache")
        for name in names:
            fp32 = Path(onnx_export(name))
            shutil.copytree(fp32, cache / fp32.relative_to(cache_root))
        return cache

    return make


@pytest.fixture(scope="session")
def vit_onnx_export(onnx_export) -> str:
    """The ONNX export of the random ViT-B-32 (the model most server tests serve)."""
    return onnx_export("ViT-B-32::openai")
