"""Regression tests of the second red-team review: each input here once froze the server, cost
gigabytes, starved other clients, or told an attacker something."""

from __future__ import annotations

import base64
import io
import random
import socket
import threading
import time
import tracemalloc

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFile
from starlette.exceptions import HTTPException

from clipserve.errors import InvalidInput, WeightsUnavailable
from clipserve.preprocess.audio import AudioLimits, decode_audio
from clipserve.preprocess.budget import DecodeBudget, process_budget
from clipserve.preprocess.image import ImageLimits, decode_image
from clipserve.server.guard import check_json_values, structure_outside_strings
from tests.audio_signals import tone
from tests.server_helpers import running_server
from tests.test_server import metric

NAME = "ViT-B-32::openai"
REDOS = b"[" * 5000 + b'"' + b'\\"' * 20000
"""The review's body: 45 KB that froze /healthz for 10 s (the string regex backtracked quadratically)."""


@pytest.fixture(scope="module")
def onnx_dir(onnx_export) -> str:
    return onnx_export(NAME)


@pytest.fixture(scope="module")
def open_server(onnx_dir):
    """A server as started by default: no API key."""
    with running_server(weights=onnx_dir, max_items=64) as (url, app):
        yield url, app


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw_socket(url: str, timeout: float = 10.0) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (read to its end), or None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


# -- 1. the JSON value bound ----------------------------------------------------------------------------


def reference_structure(body: bytes) -> int:
    """What a JSON reader sees of ``{ [ , :`` outside strings before it stops (a plain scanner)."""
    count, inside, i = 0, False, 0
    while i < len(body):
        c = body[i : i + 1]
        if inside:
            if c == b"\\":
                i += 2
                continue
            inside = c != b'"'
        elif c == b'"':
            inside = True
        elif c == b"\\":
            return count  # invalid outside a string: a parser stops here
        elif c in (b"{", b"[", b",", b":"):
            count += 1
        i += 1
    return count


def test_the_json_bound_is_linear_in_escaped_quotes() -> None:
    body = b'{"inputs": [{"text": "' + b'\\"' * (8 * 1024 * 1024)  # 16 MB, the string never closes
    start = time.perf_counter()
    assert structure_outside_strings(body) == 5  # { : [ { : before the string
    with pytest.raises(HTTPException, match="more JSON values than 100"):  # refused, but at once
        check_json_values(REDOS, 100)
    assert time.perf_counter() - start < 1.0


def test_the_json_bound_never_undercounts() -> None:
    rng = random.Random(0)
    pieces = [b'"', b"\\", b"{", b"[", b",", b":", b"a", b"\\\\", b'\\"', b"]", b"}"]
    for _ in range(20_000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert structure_outside_strings(body) >= reference_structure(body), body
    assert structure_outside_strings(b'{"a": "x,y:[{", "b": [1, 2]}') == 6


def test_a_redos_body_does_not_freeze_the_server(open_server) -> None:
    url, _ = open_server
    answers = {}

    def attack() -> None:
        body = REDOS * 2  # the review's 85 KB variant froze /healthz for 40 s
        answers["attack"] = httpx.post(
            f"{url}/encode", content=body, headers={"Content-Type": "application/json"}, timeout=30
        )

    thread = threading.Thread(target=attack)
    start = time.monotonic()
    thread.start()
    health = [httpx.get(f"{url}/healthz", timeout=5).status_code for _ in range(5)]
    thread.join(30)
    assert health == [200] * 5 and time.monotonic() - start < 2
    assert answers["attack"].status_code in (413, 422)


# -- 2. audio bombs -------------------------------------------------------------------------------------


def flac(samples: np.ndarray, rate: int) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="FLAC")
    return buffer.getvalue()


def test_audio_over_its_sample_budget_is_refused_from_the_header(monkeypatch) -> None:
    """8 channels at 655 kHz: 1.5 GB to decode a 337 KB file before the fix."""
    import soundfile

    bomb = flac(np.zeros((655_000 * 5, 8), np.int16), 655_000)
    assert len(bomb) < 400_000
    monkeypatch.setattr(soundfile.SoundFile, "read", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(
        InvalidInput, match=r"item 2: audio of 3275000 frames x 8 channels .* exceeds the limit"
    ):
        decode_audio(bomb, 2, AudioLimits(max_seconds=60))


def test_audio_decodes_in_blocks_to_the_same_samples_with_little_memory() -> None:
    import soundfile
    import soxr

    rate, seconds = 48_000, 60
    stereo = np.stack([tone(440, seconds, rate), tone(660, seconds, rate, amplitude=0.2)], axis=1)
    data = flac(np.concatenate([stereo, stereo], axis=1), rate)  # 4 channels: 46 MB as float32
    whole, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    expected = soxr.resample(whole.mean(axis=1, dtype=np.float32), rate, 44_100)
    del whole
    tracemalloc.start()
    got = decode_audio(data, 0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    assert peak < 30 * 2**20, f"decoding held {peak / 2**20:.0f} MiB (the mono 44.1 kHz result is 10.6)"


@pytest.fixture(scope="module")
def audio_export(tmp_path_factory, cache_root) -> str:
    from clipserve.encoder import Encoder
    from tests.audioclip_weights import write_checkpoint

    checkpoint = write_checkpoint(tmp_path_factory.mktemp("audioclip") / "AudioCLIP-Full-Training.pt")
    with Encoder("AudioCLIP::full", weights=checkpoint, cache_dir=cache_root) as encoder:
        return encoder.info()["weights"]


def test_a_request_heavier_than_the_in_flight_limit_is_refused_before_decoding(
    audio_export, monkeypatch
) -> None:
    """400 FLACs of 60 s of silence in one request: 3.8 GB of peak memory before the fix."""
    from clipserve.families import audioclip

    silent = b64(flac(np.zeros(44_100 * 60, np.int16), 44_100))
    assert len(silent) < 16_000
    decoded = []
    original = audioclip.decode_audio
    monkeypatch.setattr(audioclip, "decode_audio", lambda *a, **k: decoded.append(1) or original(*a, **k))
    with running_server(model="AudioCLIP::full", weights=audio_export) as (url, _):
        decoded.clear()  # the warm-up's sample tone
        bomb = httpx.post(f"{url}/encode", json={"inputs": [{"audio": silent}] * 400}, timeout=60)
        assert bomb.status_code == 413, bomb.text
        assert "weighs 28800 items" in bomb.json()["detail"] and "an audio item counts as 72" in bomb.text
        assert not decoded
        clip = b64(flac(tone(440, 2.0), 44_100))
        fits = httpx.post(f"{url}/encode", json={"inputs": [{"audio": clip}] * 28}, timeout=120)
        assert fits.status_code == 200 and len(decoded) == 28
        from clipserve.client import Client

        with Client(url) as client:  # the client halves a batch the server finds too heavy
            vectors = client.encode([base64.b64decode(clip)] * 40, batch_size=40)
        assert vectors.shape == (40, 1024) and np.allclose(vectors, np.asarray(fits.json()["embeddings"][0]))


def test_a_full_queue_refuses_before_preparing(onnx_dir, photo_paths) -> None:
    with running_server(weights=onnx_dir, max_queue=2, batch_size=1, max_wait_ms=1) as (url, app):
        service = app.state.models.default.service
        batcher = service.batchers["image"]
        release = threading.Event()
        original = batcher.run
        batcher.run = lambda items: (release.wait(30), original(items))[1]
        prepared = []
        original_prepare = service.pipeline.prepare
        service.pipeline.prepare = lambda item, *a: prepared.append(item.index) or original_prepare(item, *a)
        image = {"image": b64(photo_paths[0].read_bytes())}
        # One item runs, the next is taken and finished for the model meanwhile, two wait.
        holder = threading.Thread(
            target=lambda: httpx.post(f"{url}/encode", json={"inputs": [image] * 4}, timeout=60)
        )
        holder.start()
        deadline = time.monotonic() + 10
        while batcher.depth < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = len(prepared)
        busy = httpx.post(f"{url}/encode", json={"inputs": [image]})
        assert busy.status_code == 503 and len(prepared) == before  # nothing of it was decoded
        release.set()
        holder.join(30)
        many = httpx.post(f"{url}/encode", json={"inputs": [{"text": str(i)} for i in range(5)]})
        assert many.status_code == 200  # more items than max_queue fit an empty queue


# -- 3. JPEG scans and the decode deadline --------------------------------------------------------------


def scan_bomb(size: int, repeats: int) -> bytes:
    """A grey progressive JPEG whose last scan (an AC refinement) is repeated ``repeats`` times."""
    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    end = len(data) - 2  # before EOI
    return data[:end] + data[last:end] * repeats + data[end:]


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding(monkeypatch) -> None:
    bomb = scan_bomb(2000, 1000)  # 30 KB; 50 s to decode at 7000 x 7000 before the fix
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(InvalidInput, match="item 1: JPEG with more than 100 scans"):
        decode_image(bomb, 1)


def test_marker_bytes_inside_segments_are_not_scans() -> None:
    buffer = io.BytesIO()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    image.save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    comment = b"\xff\xda" * 300
    with_comment = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]
    np.testing.assert_array_equal(np.asarray(decode_image(with_comment)), np.asarray(Image.open(buffer)))


def test_progressive_decoding_stops_at_the_deadline_between_scans(monkeypatch) -> None:
    from clipserve.preprocess import image as image_module

    bomb = scan_bomb(512, 90)  # 96 scans: under the cap
    reads = []
    original = image_module.GuardedStream.read
    monkeypatch.setattr(
        image_module.GuardedStream, "read", lambda self, size=-1: reads.append(size) or original(self, size)
    )
    reference = Image.open(io.BytesIO(bomb))
    reference.load()
    np.testing.assert_array_equal(np.asarray(decode_image(bomb)), np.asarray(reference))
    assert len(reads) > 96  # at most one scan between two deadline checks
    monkeypatch.undo()
    with pytest.raises(
        InvalidInput, match=r"item 0: decoding the image took longer than 0 s \(max_decode_s\)"
    ):
        decode_image(bomb, 0, ImageLimits(max_decode_s=0.0))


def test_the_deadline_reaches_the_encoders(onnx_dir, audio_export) -> None:
    from clipserve.encoder import Encoder

    late = r"item 0: decoding the {} took longer than 0 s"
    with (
        Encoder(NAME, weights=onnx_dir, max_decode_s=0.0) as encoder,
        pytest.raises(InvalidInput, match=late.format("image")),
    ):
        encoder.encode([scan_bomb(256, 10)])
    with (
        Encoder("AudioCLIP::full", weights=audio_export, max_decode_s=0.0) as encoder,
        pytest.raises(InvalidInput, match=late.format("audio")),
    ):
        encoder.encode_audio([flac(tone(440, 1.0), 44_100)])


# -- 4. one decode budget for the process -----------------------------------------------------------------


def test_a_decode_budget_bounds_what_decodes_hold_at_once() -> None:
    budget = DecodeBudget(100)
    holding, most = [], []
    lock = threading.Lock()

    def decode(size: int) -> None:
        with budget.reserve(size):
            with lock:
                holding.append(size)
                most.append(sum(holding))
            time.sleep(0.01)
            with lock:
                holding.remove(size)

    threads = [threading.Thread(target=decode, args=(size,)) for size in [60, 30, 50, 500, 20, 70] * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert budget.used == 0 and max(most) == 500  # the larger-than-budget decode ran, alone
    assert all(total <= 100 for total in most if total != 500)


def test_every_model_decodes_within_one_budget(photo_paths, monkeypatch, onnx_export) -> None:
    """Two models served by one process: their decodes reserve from the same budget."""
    exports = {name: onnx_export(name) for name in (NAME, "RN50::openai")}
    assert process_budget(1) is process_budget(2048) and process_budget(1).capacity >= 2048 * 2**20
    budgets, sizes = set(), []
    original = DecodeBudget.reserve

    def reserve(self, nbytes, *args, **kwargs):
        budgets.add(id(self))
        sizes.append(nbytes)
        return original(self, nbytes, *args, **kwargs)

    monkeypatch.setattr(DecodeBudget, "reserve", reserve)
    models = [f"{name}={path}" for name, path in exports.items()]
    with running_server(model=models, preload=True) as (url, _):
        sizes.clear()  # the warm-ups' sample images
        image = {"image": b64(photo_paths[0].read_bytes())}
        for name in exports:
            answer = httpx.post(f"{url}/encode", json={"inputs": [image] * 2, "model": name}, timeout=60)
            assert answer.status_code == 200
    assert len(budgets) == 1 and len(sizes) == 4
    width, height = Image.open(photo_paths[0]).size
    assert min(sizes) >= width * height * 4  # at least Pillow's RGB storage of the photo


# -- 5, 6. stalled uploads and slow headers ----------------------------------------------------------------


def test_silent_uploads_hold_nothing_and_are_cut_off(onnx_dir) -> None:
    """8 connections declaring 16 MB each and sending nothing made every other POST 503 for 60 s."""
    with running_server(weights=onnx_dir, body_timeout_s=2) as (url, _):
        stalled = []
        for _ in range(8):
            sock = raw_socket(url)
            sock.sendall(
                b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 16777216\r\n\r\n" + b"{" * 1000
            )
            stalled.append(sock)
        time.sleep(0.3)
        fine = httpx.post(f"{url}/encode", json={"inputs": [{"text": "still served"}]}, timeout=10)
        assert fine.status_code == 200, fine.text
        stalled[0].settimeout(6)
        answer = stalled[0].recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer
        for sock in stalled:
            sock.close()


def test_headers_have_a_deadline_and_connections_a_cap(onnx_dir) -> None:
    with running_server(weights=onnx_dir, header_timeout_s=1, max_connections=6) as (url, _):
        silent = raw_socket(url)
        trickle = raw_socket(url)
        trickle.sendall(b"POST /encode HTTP/1.1\r\nHost: x\r\n")

        def keep_trickling() -> None:
            for i in range(20):
                try:
                    trickle.sendall(f"X-Slow-{i}: a\r\n".encode())
                except OSError:
                    return
                time.sleep(0.2)

        threading.Thread(target=keep_trickling, daemon=True).start()
        for sock in (silent, trickle):
            waited = closed_within(sock, 4)
            assert waited is not None and waited < 3, "a connection without complete headers stayed open"
        idle = [raw_socket(url) for _ in range(6)]
        time.sleep(0.2)
        refused = httpx.get(f"{url}/healthz", timeout=5)
        assert refused.status_code == 503  # over max_connections: uvicorn answers at once
        for sock in idle:
            sock.close()
        time.sleep(1.5)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


# -- 8. failed loads: no paths, no retry storm -------------------------------------------------------------


def test_a_failed_load_answers_without_paths_and_backs_off(onnx_dir, tmp_path) -> None:
    secret = tmp_path / "secret-weights-dir" / "model.onnx"
    with running_server(model=[f"{NAME}={onnx_dir}", f"RN50::openai={secret}"]) as (url, app):
        body = {"inputs": [{"text": "x"}], "model": "RN50::openai"}
        first = httpx.post(f"{url}/encode", json=body, timeout=60)
        assert first.status_code == 503 and "WeightsUnavailable" in first.json()["detail"]
        assert int(first.headers["Retry-After"]) >= 4
        second = httpx.post(f"{url}/encode", json=body, timeout=60)
        assert second.status_code == 503 and "next attempt in" in second.json()["detail"]
        assert metric(url, "clipserve_model_loads_total", model="RN50::openai", outcome="failed") == 1
        for answer in (first, second, httpx.get(f"{url}/readyz"), httpx.get(f"{url}/v1/models")):
            assert "secret-weights-dir" not in answer.text and str(tmp_path) not in answer.text
        failed = httpx.get(f"{url}/readyz").json()["models"]["RN50::openai"]
        assert failed["state"] == "failed" and failed["error"] == "WeightsUnavailable"
        app.state.models.models["RN50::openai"].retry_at = 0.0  # as if the back-off had passed
        assert httpx.post(f"{url}/encode", json=body, timeout=60).status_code == 503
        assert metric(url, "clipserve_model_loads_total", model="RN50::openai", outcome="failed") == 2
        assert 9 <= app.state.models.models["RN50::openai"].retry_in() <= 10  # doubled
        assert httpx.post(f"{url}/encode", json={"inputs": [{"text": "x"}]}).status_code == 200


# -- 9. fetch errors are no oracle ------------------------------------------------------------------------


def test_every_failure_to_reach_a_host_reads_the_same(monkeypatch) -> None:
    from clipserve import fetch

    def message(url: str, **kwargs) -> str:
        with pytest.raises(InvalidInput) as info:
            fetch.fetch_url(url, index=0, timeout_s=3, **kwargs)
        return str(info.value).replace(url.split("/")[2].split(":")[0], "HOST")

    private = message("http://10.1.2.3/x.png")
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    refused = message(f"http://127.0.0.1:{port}/x.png", allow_private=True)

    def no_such_name(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(fetch.socket, "getaddrinfo", no_such_name)
    unresolved = message("http://no-such-host.example/x.png")
    assert (
        private
        == refused
        == unresolved
        == "item 0: refusing to fetch from HOST: it does not resolve to a public address"
    )


def test_a_malformed_answer_is_not_echoed() -> None:
    from clipserve.fetch import fetch_url

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:
        connection, _ = server.accept()
        connection.recv(4096)
        connection.sendall(b"SECRET-BANNER internal-db-7 ready\r\n\r\n")
        connection.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(InvalidInput) as info:
        fetch_url(f"http://127.0.0.1:{server.getsockname()[1]}/x.png", allow_private=True, timeout_s=5)
    server.close()
    assert "no valid HTTP answer" in str(info.value) and "SECRET" not in str(info.value)


# -- 10. the smaller ones ---------------------------------------------------------------------------------


def test_unauthorised_answers_do_not_name_the_model(onnx_dir) -> None:
    with running_server(weights=onnx_dir, api_key="k3y") as (url, _):
        refused = httpx.post(f"{url}/encode", json={"inputs": [{"text": "a"}]})
        assert refused.status_code == 401 and "x-clipserve-model" not in refused.headers
        assert "x-clipserve-model" not in httpx.get(f"{url}/healthz").headers
        served = httpx.post(
            f"{url}/encode", json={"inputs": [{"text": "a"}]}, headers={"Authorization": "Bearer k3y"}
        )
        assert served.headers["x-clipserve-model"] == NAME


@pytest.mark.parametrize("path", ["/docs/oauth2-redirect", "/playground/static/index.html", "/", "/redoc"])
def test_every_page_has_the_content_security_policy(open_server, path) -> None:
    url, _ = open_server
    page = httpx.get(f"{url}{path}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_an_export_of_another_tag_is_not_served_under_this_name(onnx_dir) -> None:
    from clipserve.encoder import Encoder

    with pytest.raises(
        WeightsUnavailable, match="holds an export of ViT-B-32::openai, not of ViT-B-32::laion2b"
    ):
        Encoder("ViT-B-32::laion2b_s34b_b79k", weights=onnx_dir)


def test_prune_neither_follows_nor_counts_symlinks(tmp_path, capsys) -> None:
    from clipserve.cache import prune

    own = tmp_path / "my-models" / "ViT-B-32"
    own.mkdir(parents=True)
    (own / "weights.bin").write_bytes(b"x" * 1000)
    linked = tmp_path / "cache" / "checkpoints" / "ViT-B-32" / "mine"
    linked.parent.mkdir(parents=True)
    linked.symlink_to(own, target_is_directory=True)
    real = tmp_path / "cache" / "checkpoints" / "RN50" / "openai"
    real.mkdir(parents=True)
    (real / "weights.bin").write_bytes(b"y" * 1000)
    removed = prune(tmp_path / "cache", max_bytes=0)
    assert [entry.path for entry in removed] == [real]
    assert (own / "weights.bin").exists() and linked.is_symlink() and not real.exists()


def test_every_model_fetches_on_one_pool(encoder_for) -> None:
    vit, rn50 = encoder_for(NAME, "onnx"), encoder_for("RN50::openai", "onnx")
    assert vit.pipeline.fetch_pool is rn50.pipeline.fetch_pool
