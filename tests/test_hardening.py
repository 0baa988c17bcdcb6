"""Regression tests of the hardening review: each input here once cost memory, a 500, a hang or a leak."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFile

from clipserve.errors import InvalidInput
from clipserve.preprocess.image import ImagePreprocessor, allowed_formats, decode_image
from clipserve.zoo import get_spec
from tests.conftest import open_clip_transform
from tests.server_helpers import running_server

NAME = "ViT-B-32::openai"


def strip_png(width: int, height: int) -> bytes:
    """A grey PNG of any size written row by row (Pillow would need the whole image in memory)."""
    row = b"\0" + b"\x80" * width
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def onnx_dir(onnx_export) -> str:
    return onnx_export(NAME)


@pytest.fixture(scope="module")
def server(onnx_dir):
    with running_server(weights=onnx_dir, api_key="k3y", allow_url=True, max_items=64) as (url, app):
        yield url, app


AUTH = {"Authorization": "Bearer k3y"}


def post(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(url, json=body, headers=AUTH, timeout=30, **kwargs)


# -- 1. resize bombs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "why"), [((1, 10_000_000), "side ratio"), ((8, 8000), "side ratio")])
def test_strips_are_refused_from_the_header(server, size, why) -> None:
    url, _ = server
    png = strip_png(*size)
    assert len(png) < 60_000
    response = post(f"{url}/encode", {"inputs": [{"text": "ok"}, {"image": _b64(png)}]})
    assert response.status_code == 422, response.text
    assert response.json()["index"] == 1 and why in response.json()["detail"]


def test_a_thin_image_within_the_ratio_resizes_only_its_crop(monkeypatch) -> None:
    spec = get_spec(NAME)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3, 290, 3), dtype=np.uint8))
    calls = []
    original = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        calls.append((size, kwargs.get("box")))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    ours = ImagePreprocessor(spec)(image)
    assert calls[0][0] == (224, 224) and calls[0][1] is not None  # never the 21,653 x 224 full resize
    monkeypatch.setattr(Image.Image, "resize", original)
    reference = open_clip_transform(spec)(image).numpy()
    assert np.abs(ours - reference).max() <= 1.01 / 255 / min(spec.std)  # at most one level apart


def test_photos_stay_pixel_exact_through_the_full_resize(photo_paths) -> None:
    spec = get_spec(NAME)
    for path in photo_paths:
        image = decode_image(path)
        np.testing.assert_array_equal(
            ImagePreprocessor(spec)(image), open_clip_transform(spec)(image).numpy()
        )


@pytest.mark.parametrize("error", [OverflowError("too big"), MemoryError(), ValueError("odd"), KeyError("x")])
def test_every_decoder_failure_is_invalid_input(monkeypatch, photo_paths, error) -> None:
    def fail(self):
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(InvalidInput, match=f"item 4: corrupt or truncated image: {type(error).__name__}"):
        decode_image(photo_paths[0].read_bytes(), index=4)


def test_a_pixel_refusal_names_the_item_once(server) -> None:
    url, _ = server
    big = strip_png(8000, 7000)
    detail = post(f"{url}/encode", {"inputs": [{"image": _b64(big)}]}).json()["detail"]
    assert detail.startswith("item 0: image of 8000x7000") and "item 0: item 0" not in detail


# -- 2. formats ---------------------------------------------------------------------------------------


def _saved(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{} loop\nshowpage\n"


@pytest.mark.parametrize("fmt", ["PCX", "SGI", "JPEG2000", "TGA", "PPM", "EPS"])
def test_formats_outside_the_allow_list_are_refused(fmt) -> None:
    data = EPS if fmt == "EPS" else _saved(Image.new("RGB", (16, 16), "red"), fmt)
    with pytest.raises(InvalidInput, match=r"item 0: not an image in an accepted format \(JPEG"):
        decode_image(data, index=0)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF"])
def test_allowed_formats_decode(fmt) -> None:
    assert fmt in allowed_formats()
    image = decode_image(_saved(Image.new("RGB", (40, 30), "red"), fmt))
    assert image.size == (40, 30)


# -- 6. work before auth and limits ---------------------------------------------------------------------


def _raw_request(url: str, head: bytes, timeout: float = 3.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        return sock.recv(4096)


def test_the_key_is_checked_before_the_body_is_read(server) -> None:
    url, _ = server
    head = (
        b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 9000000\r\n\r\n"
    )
    start = time.monotonic()
    answer = _raw_request(url, head)  # the 9 MB body is never sent: the answer must not wait for it
    assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - start < 2


def test_item_counts_are_checked_before_items_are_validated(server) -> None:
    url, _ = server
    response = post(f"{url}/encode", {"inputs": [{"colour": "red"}] * 65})
    assert (
        response.status_code == 413 and response.json()["detail"] == "inputs holds 65 items; the limit is 64"
    )
    assert post(f"{url}/v1/embeddings", {"input": ["a"] * 65}).status_code == 413


def test_bodies_of_millions_of_tiny_values_are_refused_before_parsing(server, monkeypatch) -> None:
    from clipserve.server import guard

    url, _ = server
    parsed = []
    monkeypatch.setattr(guard.orjson, "loads", lambda body: parsed.append(body) or {})
    start = time.monotonic()
    for body in (
        b'{"inputs": [' + b"{}," * 2_000_000 + b"{}]}",
        b'{"input": [' + b'"a",' * 2_000_000 + b'"a"]}',
    ):
        response = httpx.post(
            f"{url}/encode", content=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        assert response.status_code == 413 and "more JSON values than 320" in response.json()["detail"]
    assert time.monotonic() - start < 5 and not parsed
    monkeypatch.undo()
    commas_in_text = {"inputs": [{"text": ",{[:" * 2000}, {"text": "b"}]}  # structure inside strings is not
    assert post(f"{url}/encode", commas_in_text).status_code == 200


def test_too_many_urls_in_one_request(server) -> None:
    url, _ = server
    inputs = [{"image": f"http://192.0.2.{i}/x.png"} for i in range(17)]
    response = post(f"{url}/encode", {"inputs": inputs})
    assert response.status_code == 413 and "17 URL items" in response.json()["detail"]


def test_in_flight_limits_answer_503_with_retry_after(onnx_dir) -> None:
    with running_server(weights=onnx_dir, max_inflight_items=3, max_inflight_mb=0.0005) as (url, app):
        batcher = app.state.models.default.service.batchers["text"]
        release = threading.Event()
        original = batcher.run
        batcher.run = lambda items: (release.wait(30), original(items))[1]
        first = {}
        holder = threading.Thread(
            target=lambda: first.update(
                r=httpx.post(f"{url}/encode", json={"inputs": [{"text": "a"}] * 2}, timeout=60)
            )
        )
        holder.start()
        deadline = time.monotonic() + 10
        while batcher.depth < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        by_items = httpx.post(f"{url}/encode", json={"inputs": [{"text": "b"}] * 2})
        by_bytes = httpx.post(f"{url}/encode", json={"inputs": [{"text": "c" * 600}]})
        release.set()
        holder.join(30)
        for busy in (by_items, by_bytes):
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
            assert busy.json()["error"] == "Overloaded"
        assert first["r"].status_code == 200
        assert httpx.post(f"{url}/encode", json={"inputs": [{"text": "d"}] * 3}).status_code == 200


def test_payloads_are_decoded_and_parsed_off_the_event_loop(server, photo_paths, monkeypatch) -> None:
    from clipserve import inputs
    from clipserve.server import guard

    url, _ = server
    threads = []
    original_b64, original_json = inputs.decode_base64, guard.orjson.loads

    def record_b64(*args, **kwargs):
        threads.append(("base64", threading.current_thread().name))
        return original_b64(*args, **kwargs)

    def record_json(body):
        threads.append(("json", threading.current_thread().name))
        return original_json(body)

    monkeypatch.setattr("clipserve.pipeline.decode_base64", record_b64)
    monkeypatch.setattr(guard.orjson, "loads", record_json)
    big = {"inputs": [{"image": _b64(photo_paths[0].read_bytes())}]}
    assert post(f"{url}/encode", big).status_code == 200
    b64_threads = [name for kind, name in threads if kind == "base64"]
    assert b64_threads and all(name.startswith("clipserve-prepare") for name in b64_threads)
    json_threads = [name for kind, name in threads if kind == "json"]
    assert json_threads and all("AnyIO" in name or "worker" in name.lower() for name in json_threads)


# -- 7-9. errors --------------------------------------------------------------------------------------------


def test_lone_surrogates_and_bad_json_answer_4xx(server) -> None:
    url, _ = server
    body = b'{"inputs": [{"image": "http://192.0.2.1/\\ud800"}]}'
    response = httpx.post(f"{url}/encode", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422
    malformed = httpx.post(
        f"{url}/encode", content=b'{"inputs": [', headers={**AUTH, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 422 and malformed.json()["index"] is None
    assert "malformed JSON at byte 12" in malformed.json()["detail"]
    assert post(f"{url}/encode", {"inputs": [{"text": "still serving"}]}).status_code == 200


def test_readyz_shows_no_paths(server) -> None:
    url, _ = server
    ready = httpx.get(f"{url}/readyz", headers=AUTH).json()
    assert ready["status"] == "ready" and "weights" not in ready
    assert "/" not in json.dumps({k: v for k, v in ready.items() if k != "model"})


def test_available_cpus_follow_affinity_and_quota(tmp_path, monkeypatch) -> None:
    from clipserve import resources

    quota = tmp_path / "cpu.max"
    quota.write_text("50000 100000\n")
    monkeypatch.setattr(resources, "CGROUP_CPU_MAX", quota)
    assert resources.available_cpus() == 1
    quota.write_text("max 100000\n")
    assert resources.available_cpus() == len(os.sched_getaffinity(0))


@pytest.mark.slow
def test_int8_files_are_shared_like_fp32(tmp_path, onnx_export) -> None:
    from clipserve.backends.precision import derive_int8

    fp32 = onnx_export(NAME)
    out = derive_int8(type(tmp_path)(fp32), tmp_path / "int8", "u8s8")
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {stat.S_IMODE((type(tmp_path)(fp32) / "clipserve.json").stat().st_mode)}


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
