"""Weights: explicit paths, the cache, downloads (over loopback only) and the offline message."""

import dataclasses
import hashlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clipserve.errors import UnsupportedModel, WeightsUnavailable
from clipserve.weights import checkpoint_cache, explicit_weights, find_checkpoint
from clipserve.zoo import get_spec
from tests.conftest import cosines

NAME = "ViT-B-32::openai"


def test_offline_with_nothing_cached_explains_everything(tmp_path, monkeypatch) -> None:
    from clipserve.encoder import Encoder

    monkeypatch.setenv("CLIPSERVE_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as info:
        Encoder(NAME, cache_dir=tmp_path)
    message = str(info.value)
    assert "no weights for ViT-B-32::openai" in message
    assert str(tmp_path / "checkpoints" / "ViT-B-32" / "openai") in message
    assert "offline" in message
    assert "weights='/path/to/open_clip_model.safetensors'" in message
    assert "--weights PATH" in message


def test_hub_and_url_failures_are_listed(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CLIPSERVE_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub client itself refuses: no traffic leaves
    spec = dataclasses.replace(get_spec(NAME), url="http://127.0.0.1:9/nothing-listens-here.pt")
    monkeypatch.setattr("clipserve.weights.offline", lambda: False)
    with pytest.raises(WeightsUnavailable) as info:
        find_checkpoint(spec, tmp_path)
    message = str(info.value)
    assert "Hugging Face Hub timm/vit_base_patch32_clip_224.openai/open_clip_model.safetensors" in message
    assert "URL http://127.0.0.1:9/nothing-listens-here.pt" in message


def test_explicit_path_errors(tmp_path) -> None:
    spec = get_spec(NAME)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        explicit_weights(spec, tmp_path / "nope.safetensors")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(
        WeightsUnavailable, match="neither a checkpoint file, a hub-layout directory nor an ONNX export"
    ):
        explicit_weights(spec, tmp_path / "notes.txt")


@pytest.mark.slow
def test_url_download_verifies_checksum_and_caches(
    tmp_path, monkeypatch, loopback_files, random_model
) -> None:
    base, files = loopback_files
    payload = random_model(NAME).checkpoint.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    files[f"/{digest}/ViT-B-32.pt"] = payload
    files[f"/{'0' * 64}/ViT-B-32.pt"] = payload
    monkeypatch.setattr("clipserve.weights.offline", lambda: False)
    spec = dataclasses.replace(get_spec(NAME), hf_hub="", url=f"{base}/{'0' * 64}/ViT-B-32.pt")
    with pytest.raises(WeightsUnavailable, match="checksum mismatch"):
        find_checkpoint(spec, tmp_path)
    assert not list(checkpoint_cache(spec, tmp_path).glob("*.pt"))

    spec = dataclasses.replace(spec, url=f"{base}/{digest}/ViT-B-32.pt")
    path = find_checkpoint(spec, tmp_path)
    assert path == checkpoint_cache(spec, tmp_path) / "ViT-B-32.pt"
    assert path.read_bytes() == payload
    files.clear()  # the cached copy is used from now on
    assert find_checkpoint(spec, tmp_path) == path


@pytest.mark.slow
def test_cached_checkpoint_is_used_offline(tmp_path, random_model, photo_paths, new_encoder) -> None:
    model = random_model(NAME)
    target = checkpoint_cache(get_spec(NAME), tmp_path)
    target.mkdir(parents=True)
    (target / "open_clip_model.pt").write_bytes(model.checkpoint.read_bytes())
    encoder = new_encoder(NAME, backend="torch", cache_dir=tmp_path)
    assert encoder.info()["weights"] == str(target / "open_clip_model.pt")
    from clipserve.preprocess.image import decode_image

    reference = model.image_vectors([decode_image(photo_paths[0])])
    assert cosines(encoder.encode([photo_paths[0]]), reference)[0] > 0.99999


def test_safetensors_checkpoints_load(tmp_path, random_model, encoder_for, new_encoder) -> None:
    from safetensors.torch import save_file

    model = random_model(NAME)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, path)
    encoder = new_encoder(NAME, backend="torch", weights=path, cache_dir=tmp_path)
    texts = ["a cat", "a dog"]
    assert cosines(encoder.encode_text(texts), encoder_for(NAME, "torch").encode_text(texts)).min() > 0.99999


@pytest.mark.slow
def test_onnx_export_is_cached_and_reused(cache_with_exports, random_model, monkeypatch, new_encoder) -> None:
    """A cached export is found again and never redone (exporting into an empty cache:
    tests/test_cache.py)."""
    from clipserve.backends import factory
    from clipserve.encoder import Encoder

    checkpoint = random_model("RN50::openai").checkpoint
    tmp_path = cache_with_exports("RN50::openai")
    first = new_encoder("RN50::openai", weights=checkpoint, cache_dir=tmp_path)
    export_dir = first.info()["weights"]
    assert export_dir.startswith(str(tmp_path / "onnx" / "RN50"))

    def no_export(*args, **kwargs):
        raise AssertionError("exported again instead of reusing the cache")

    monkeypatch.setattr("clipserve.backends.export.export_onnx", no_export)
    second = new_encoder("RN50::openai", weights=checkpoint, cache_dir=tmp_path)
    assert second.info()["weights"] == export_dir
    assert factory.onnx_model_dir(second.spec, checkpoint, tmp_path).as_posix() == export_dir
    assert cosines(first.encode_text(["a"]), second.encode_text(["a"]))[0] > 0.99999
    with pytest.raises(
        UnsupportedModel, match=f"the torch backend runs a checkpoint, and {export_dir} is an"
    ):
        Encoder("RN50::openai", backend="torch", weights=export_dir, cache_dir=tmp_path)


def test_a_recorded_size_and_checksum_are_checked(tmp_path, monkeypatch, loopback_files) -> None:
    """AudioCLIP's release assets carry no checksum in their URL: the zoo records size and sha256."""
    base, files = loopback_files
    payload = b"weights" * 1000
    files["/v0.1/AudioCLIP-Full-Training.pt"] = payload
    monkeypatch.setattr("clipserve.weights.offline", lambda: False)
    spec = get_spec("AudioCLIP::full")
    assert spec.size == 537_302_068 and len(spec.sha256) == 64
    url = f"{base}/v0.1/AudioCLIP-Full-Training.pt"
    with pytest.raises(WeightsUnavailable, match="7000 bytes, expected 537302068"):
        find_checkpoint(dataclasses.replace(spec, url=url), tmp_path)
    with pytest.raises(WeightsUnavailable, match="checksum mismatch"):
        find_checkpoint(dataclasses.replace(spec, url=url, size=len(payload)), tmp_path)
    good = dataclasses.replace(spec, url=url, size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    assert find_checkpoint(good, tmp_path).read_bytes() == payload


@pytest.mark.slow
def test_a_hub_folder_without_its_config_loads_as_the_named_zoo_model(
    random_model, photo_paths, tmp_path
) -> None:
    """A folder of ``open_clip_pytorch_model.bin`` (and tokenizer files) without
    ``open_clip_config.json``: the zoo entry named says what the config would."""
    import shutil

    from clipserve.encoder import Encoder
    from clipserve.families.openclip import locate_tokenizer
    from clipserve.settings import EngineSettings

    checkpoint = random_model(NAME).checkpoint
    folder = tmp_path / "hub"
    folder.mkdir()
    shutil.copy(checkpoint, folder / "open_clip_pytorch_model.bin")
    assert explicit_weights(get_spec(NAME), folder) == folder / "open_clip_pytorch_model.bin"
    inputs = ["a photo of a cat", photo_paths[0]]
    with (
        Encoder(NAME, weights=folder, backend="torch", cache_dir=tmp_path / "a") as from_folder,
        Encoder(NAME, weights=checkpoint, backend="torch", cache_dir=tmp_path / "b") as from_file,
    ):
        assert cosines(from_folder.encode(inputs), from_file.encode(inputs)).min() > 0.99999
    (folder / "tokenizer.json").write_text("{}")  # a Hugging Face tokenizer's files sit in the folder too
    siglip = get_spec("ViT-B-16-SigLIP::webli")
    weights = explicit_weights(siglip, folder)
    assert locate_tokenizer(siglip, EngineSettings(), weights, tmp_path / "cache") == folder
    with pytest.raises(WeightsUnavailable, match="neither a checkpoint file"):
        explicit_weights(siglip, tmp_path)  # a folder of neither


LOADS_ONLINE = """
import json, sys, time
from clipserve.encoder import Encoder
from clipserve.errors import WeightsUnavailable

started, messages = time.monotonic(), []
for model, source in (("ViT-B-32::openai", "immich"), ("ViT-B-32::laion2b_s34b_b79k", "checkpoint")):
    try:
        Encoder(model, source=source, cache_dir=sys.argv[1])
    except WeightsUnavailable as exc:
        messages.append(str(exc))
print(json.dumps({"seconds": time.monotonic() - started, "messages": messages}))
"""


def load_online(hub: str, cache) -> dict:
    """Two loads with downloads on, in a process whose Hugging Face hub is ``hub`` (``HF_ENDPOINT``,
    which the hub library reads once, at import): a stand-in on loopback."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CLIPSERVE_OFFLINE", "HF_HUB_OFFLINE")}
    env |= {"HF_ENDPOINT": hub, "HF_HOME": str(cache / "hf-home")}
    run = subprocess.run(
        [sys.executable, "-c", LOADS_ONLINE, str(cache)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_an_unreachable_hub_fails_at_once_with_what_to_do(tmp_path) -> None:
    """A hub that takes connections and never answers cost ~50 s of retries before any error."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete, and nothing is ever read or answered
    try:
        loads = load_online(f"http://127.0.0.1:{silent.getsockname()[1]}", tmp_path)
    finally:
        silent.close()
    assert loads["seconds"] < 9  # one 5 s check, remembered for the second load
    assert len(loads["messages"]) == 2
    for message in loads["messages"]:
        assert "unreachable" in message and "did not answer" in message and "CLIPSERVE_OFFLINE=1" in message


class _NotFound(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args) -> None:
        pass


def test_a_failed_download_leaves_nothing_in_the_cache(tmp_path) -> None:
    """``cache list`` showed an empty ``checkpoints/…`` entry left by a failed download."""
    import threading

    from clipserve.cache import entries

    hub = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)  # a hub where nothing exists
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        loads = load_online(f"http://127.0.0.1:{hub.server_address[1]}", tmp_path)
    finally:
        hub.shutdown()
    assert len(loads["messages"]) == 2 and "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in loads["messages"][1]
    assert entries(tmp_path) == []
    assert not (tmp_path / "checkpoints" / "ViT-B-32" / "laion2b_s34b_b79k").exists()
