"""The real server on 127.0.0.1: every endpoint through the client, plain HTTP and the OpenAI client."""

from __future__ import annotations

import base64
import io
import textwrap
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clipserve.client import AsyncClient, Client, ServerError
from tests.conftest import cosines
from tests.server_helpers import running_server

NAME = "ViT-B-32::openai"


@pytest.fixture(scope="module")
def onnx_dir(onnx_export) -> str:
    return onnx_export(NAME)


@pytest.fixture(scope="module")
def server(onnx_dir):
    with running_server(weights=onnx_dir, max_items=64, max_body_mb=6, max_pixels=4_000_000) as (url, app):
        yield url, app


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metric(url: str, name: str, headers: dict | None = None, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=headers).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_encode_json_npy_and_client_match_offline(server, photo_paths, encoder_for) -> None:
    url, _ = server
    offline = encoder_for(NAME, "onnx").encode(["a photo of a cat", photo_paths[0], photo_paths[1]])
    body = {
        "inputs": [
            {"text": "a photo of a cat"},
            {"image": b64(photo_paths[0].read_bytes())},
            {"image": "data:image/png;base64," + b64(photo_paths[1].read_bytes())},
        ]
    }
    as_json = httpx.post(f"{url}/encode", json=body)
    assert as_json.status_code == 200
    assert as_json.json()["model"] == NAME and as_json.json()["dim"] == 512
    assert cosines(np.asarray(as_json.json()["embeddings"], np.float32), offline).min() > 0.99999
    as_npy = httpx.post(f"{url}/encode", json=body, headers={"Accept": "application/x-npy"})
    assert as_npy.headers["content-type"] == "application/x-npy"
    assert cosines(np.load(io.BytesIO(as_npy.content)), offline).min() > 0.99999
    wrapped = "\n".join(textwrap.wrap(b64(photo_paths[0].read_bytes()), 76))  # as `base64` prints it
    from_wrapped = httpx.post(f"{url}/encode", json={"inputs": [{"image": wrapped}]}).json()["embeddings"]
    assert cosines(np.asarray(from_wrapped, np.float32), offline[1:2])[0] > 0.99999
    with Client(url) as client:
        vectors = client.encode(
            ["a photo of a cat", str(photo_paths[0]), photo_paths[1].read_bytes()], batch_size=2
        )
    assert vectors.dtype == np.float32 and cosines(vectors, offline).min() > 0.99999


def test_client_takes_arrays_pil_and_shows_progress(server, photo_paths, encoder_for, capsys) -> None:
    from PIL import Image

    url, _ = server
    image = Image.open(photo_paths[2]).convert("RGB")
    with Client(url) as client:
        vectors = client.encode([np.asarray(image), image], show_progress=True)
    assert "encoding" in capsys.readouterr().err
    expected = encoder_for(NAME, "onnx").encode([image, image])
    assert cosines(vectors, expected).min() > 0.99999


def test_async_client(server, photo_paths, encoder_for) -> None:
    import asyncio

    url, _ = server
    texts = [f"caption number {i}" for i in range(10)]

    async def run():
        async with AsyncClient(url, concurrency=3) as client:
            return await client.encode(texts, batch_size=3), await client.rank(
                "a cat", [photo_paths[0], "a dog"]
            )

    vectors, ranked = asyncio.run(run())
    assert cosines(vectors, encoder_for(NAME, "onnx").encode_text(texts)).min() > 0.99999
    assert sorted(r.index for r in ranked) == [0, 1]


def test_rank_matches_encoder_rank(server, photo_paths, encoder_for) -> None:
    url, _ = server
    candidates = [photo_paths[i] for i in range(4)]
    expected = encoder_for(NAME, "onnx").rank("a photo of a cat", candidates)
    with Client(url) as client:
        ranked = client.rank("a photo of a cat", candidates)
    assert [r.index for r in ranked] == [m.index for m in expected]
    for got, want in zip(ranked, expected, strict=True):
        assert got.clip_score == pytest.approx(want.clip_score, abs=1e-4)
        assert type(got) is type(want) and got.candidate == want.candidate  # one name, one shape
    image_query = httpx.post(
        f"{url}/rank",
        json={
            "query": {"image": b64(photo_paths[0].read_bytes())},
            "candidates": [{"text": "a cat"}, {"text": "an astronaut"}],
        },
    ).json()
    assert sum(m["clip_score"] for m in image_query["matches"]) == pytest.approx(1.0)


def test_openai_embeddings_with_the_openai_client(server, photo_paths, encoder_for) -> None:
    import openai

    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    data_uri = "data:image/png;base64," + b64(photo_paths[0].read_bytes())
    response = client.embeddings.create(model=NAME, input=["a photo of a cat", data_uri])
    vectors = np.asarray([d.embedding for d in response.data], np.float32)
    expected = encoder_for(NAME, "onnx").encode(["a photo of a cat", photo_paths[0]])
    assert cosines(vectors, expected).min() > 0.99999
    assert response.model == NAME and response.usage.prompt_tokens > 0
    assert [m.id for m in client.models.list().data] == [NAME]
    plain = httpx.post(f"{url}/v1/embeddings", json={"input": "a cat", "encoding_format": "float"}).json()
    assert plain["object"] == "list" and len(plain["data"][0]["embedding"]) == 512
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="text-embedding-3-small", input="a cat")
    with pytest.raises(openai.UnprocessableEntityError, match="dimensions must be 512"):
        client.embeddings.create(model=NAME, input="a cat", dimensions=256)


def test_health_ready_docs(server) -> None:
    url, _ = server
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == NAME and ready["backend"] == "onnx"
    assert httpx.get(f"{url}/docs").status_code == 200
    assert "/v1/embeddings" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_metrics_change_with_requests(server) -> None:
    url, _ = server
    served = {"model": NAME, "backend": "onnx", "precision": "fp32"}
    before_ok = metric(url, "clipserve_requests_total", route="/encode", status="200", **served)
    before_items = metric(url, "clipserve_items_total", modality="text", **served)
    before_bad = metric(url, "clipserve_request_errors_total", route="/encode", status="422", **served)
    httpx.post(f"{url}/encode", json={"inputs": [{"text": "a"}, {"text": "b"}]})
    httpx.post(f"{url}/encode", json={"inputs": [{"image": "not base64!"}]})
    assert metric(url, "clipserve_requests_total", route="/encode", status="200", **served) == before_ok + 1
    assert metric(url, "clipserve_items_total", modality="text", **served) == before_items + 2
    assert (
        metric(url, "clipserve_request_errors_total", route="/encode", status="422", **served)
        == before_bad + 1
    )
    assert metric(url, "clipserve_batch_size_count", modality="text", **served) >= 1
    assert metric(url, "clipserve_request_duration_seconds_count", route="/encode", **served) >= 2
    assert metric(url, "clipserve_model_info", device="cpu", **served) == 1
    text = httpx.get(f"{url}/metrics").text
    assert 'clipserve_queue_depth{backend="onnx",family="open_clip",modality="image"' in text


def _corrupt(photo_paths) -> bytes:
    data = bytearray(photo_paths[0].read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    return bytes(data)


def _bomb() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("inputs", "status", "error", "index", "detail"),
    [
        ([{"text": "ok"}, {"image": "***not base64***"}], 422, "InvalidInput", 1, "valid base64"),
        (
            [{"text": "ok"}, {"image": b64(b"plain text, not an image")}],
            422,
            "InvalidInput",
            1,
            "not an image",
        ),
        ([{"text": "ok"}, {"image": "CORRUPT"}], 422, "InvalidInput", 1, "corrupt or truncated"),
        ([{"image": "BOMB"}], 422, "InvalidInput", 0, "exceeds the limit of 4000000"),
        ([{"text": "ok"}, {"text": "x" * 20000}], 422, "InvalidInput", 1, "exceeds the limit of 16384"),
        ([{"text": "ok"}, {"text": "a", "colour": "red"}], 422, "InvalidRequest", 1, "colour"),
        ([{"text": "ok"}, {"text": "a", "image": "b"}], 422, "InvalidRequest", 1, "exactly one"),
        ([{"text": str(i)} for i in range(65)], 413, "RequestTooLarge", None, "limit is 64"),
        ([{"image": "https://example.com/cat.jpg"}], 422, "InvalidInput", 0, "--allow-url"),
    ],
)
def test_bad_inputs_answer_4xx_naming_the_item(
    server, photo_paths, inputs, status, error, index, detail
) -> None:
    url, _ = server
    replace = {"CORRUPT": b64(_corrupt(photo_paths)), "BOMB": b64(_bomb())}
    inputs = [{k: replace.get(v, v) for k, v in x.items()} for x in inputs]
    response = httpx.post(f"{url}/encode", json={"inputs": inputs})
    assert response.status_code == status
    body = response.json()
    assert (body["error"], body["index"]) == (error, index)
    assert detail in body["detail"]
    assert httpx.post(f"{url}/encode", json={"inputs": [{"text": "still serving"}]}).status_code == 200


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        ({"image": "data:text/html;base64,PGI+"}, "neither an image nor audio"),  # found when sniffed
        ({"image": "CORRUPT"}, "corrupt or truncated"),  # found when decoded
    ],
)
def test_rank_names_the_bad_candidate_by_its_place_among_candidates(server, photo_paths, bad, detail) -> None:
    url, _ = server
    bad = {k: b64(_corrupt(photo_paths)) if v == "CORRUPT" else v for k, v in bad.items()}
    candidates = [{"text": "a cat"}, {"text": "a dog"}, bad]
    response = httpx.post(f"{url}/rank", json={"query": {"text": "a pet"}, "candidates": candidates})
    body = response.json()
    assert (response.status_code, body["error"], body["index"]) == (422, "InvalidInput", 2)
    assert body["detail"].startswith("item 2: candidate: ") and detail in body["detail"]
    response = httpx.post(f"{url}/rank", json={"query": bad, "candidates": candidates[:2]})
    body = response.json()
    assert (response.status_code, body["index"]) == (422, None)
    assert body["detail"].startswith("query: ") and detail in body["detail"]


def test_malformed_and_oversized_bodies(server) -> None:
    url, _ = server
    assert (
        httpx.post(
            f"{url}/encode", content=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 422
    )
    assert httpx.post(f"{url}/encode", json={"inputs": []}).json()["error"] == "InvalidRequest"
    assert httpx.post(f"{url}/encode", json={"inputs": [{"text": "a"}], "extra": 1}).status_code == 422
    huge = {"inputs": [{"text": "x" * (7 * 1024 * 1024)}]}
    response = httpx.post(f"{url}/encode", json=huge)
    assert response.status_code == 413 and response.json()["error"] == "RequestTooLarge"

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b'{"inputs": [{"text": "'
        for _ in range(70):
            yield b"x" * 100_000
        yield b'"}]}'

    streamed = httpx.post(f"{url}/encode", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert httpx.get(f"{url}/nothing-here").json()["error"] == "NotFound"
    assert httpx.post(f"{url}/encode", json={"inputs": [{"text": "fine"}]}).status_code == 200


def test_api_key(onnx_dir) -> None:
    with running_server(weights=onnx_dir, api_key="s3cret") as (url, _):
        body = {"inputs": [{"text": "a"}]}
        assert httpx.get(f"{url}/healthz").status_code == 200
        denied = httpx.post(f"{url}/encode", json=body)
        assert denied.status_code == 401 and denied.json()["error"] == "Unauthorized"
        assert denied.headers["WWW-Authenticate"] == "Bearer"
        assert (
            httpx.post(f"{url}/encode", json=body, headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert (
            httpx.post(f"{url}/encode", json=body, headers={"Authorization": "Bearer s3cret"}).status_code
            == 200
        )
        with Client(url, api_key="s3cret") as client:
            assert client.encode(["a"]).shape == (1, 512)
        with Client(url) as client, pytest.raises(ServerError, match="401 Unauthorized"):
            client.encode(["a"])


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:9/x.png",
        "http://localhost:9/x.png",
        "http://10.1.2.3/x.png",
        "http://192.168.1.1/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/x.png",
        "http://[::ffff:127.0.0.1]:9/x.png",
    ],
)
def test_url_inputs_refuse_loopback_private_and_metadata(onnx_dir, target) -> None:
    with running_server(weights=onnx_dir, allow_url=True) as (url, _):
        response = httpx.post(f"{url}/encode", json={"inputs": [{"text": "a"}, {"image": target}]})
        assert response.status_code == 422
        assert response.json()["index"] == 1
        assert "refusing to fetch" in response.json()["detail"]


def test_back_pressure_answers_503_with_retry_after(onnx_dir) -> None:
    with running_server(weights=onnx_dir, max_queue=4, batch_size=1, max_wait_ms=1) as (url, app):
        batcher = app.state.models.default.service.batchers["text"]
        release = threading.Event()
        original = batcher.run

        def blocked(items):
            release.wait(30)
            return original(items)

        batcher.run = blocked
        first = {}
        thread = threading.Thread(
            target=lambda: first.update(
                r=httpx.post(f"{url}/encode", json={"inputs": [{"text": "a"}, {"text": "b"}]}, timeout=60)
            )
        )
        thread.start()
        deadline = time.monotonic() + 10
        while batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = httpx.post(f"{url}/encode", json={"inputs": [{"text": str(i)} for i in range(4)]})
        assert busy.status_code == 503
        assert busy.headers["Retry-After"] == "1" and busy.json()["error"] == "Overloaded"
        threading.Timer(0.5, release.set).start()
        with Client(url, backoff_s=0.2) as client:  # retried with backoff until the queue drains
            assert client.encode([str(i) for i in range(4)]).shape == (4, 512)
        thread.join(30)
        assert first["r"].status_code == 200


def test_sigterm_drains_in_flight_requests(onnx_dir, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.server_helpers import free_port

    port = free_port()
    env = {**os.environ, "CLIPSERVE_MAX_WAIT_MS": "3000", "CLIPSERVE_MAX_BATCH_SIZE": "64"}
    process = subprocess.Popen(
        [sys.executable, "-m", "clipserve.cli", "serve", "--weights", onnx_dir, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        result = {}
        request = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(f"{url}/encode", json={"inputs": [{"text": "in flight"}]}, timeout=30)
            )
        )
        request.start()
        time.sleep(1.0)  # the request now waits in the batcher (3 s window)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no new connections once draining
            httpx.get(f"{url}/healthz", timeout=2)
        request.join(30)
        assert result["r"].status_code == 200
        assert len(result["r"].json()["embeddings"][0]) == 512
        # uvicorn re-raises the signal once it has drained, so the exit status says "ended by SIGTERM"
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_grafana_dashboard_queries_only_metrics_the_server_exports(server) -> None:
    import json
    import re

    from tests.conftest import REPO

    url, _ = server
    httpx.post(f"{url}/encode", json={"inputs": [{"text": "a"}]})
    httpx.post(
        f"{url}/encode", json={"inputs": [{"image": "not base64!"}]}
    )  # an error, so errors are counted
    exported = {
        s.name for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text) for s in f.samples
    }
    dashboard = json.loads((REPO / "deploy" / "grafana" / "clipserve-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b(clipserve_[a-z_]+)", e)}
    assert len(used) >= 6
    assert used <= exported, used - exported
