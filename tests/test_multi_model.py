"""Several models in one server: per-request choice, lazy loads, idle unloads and the memory bound."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import numpy as np
import pytest

from clipserve.client import Client
from clipserve.resources import resident_bytes
from tests.conftest import cosines
from tests.server_helpers import resident_mib, running_server, server_process
from tests.test_server import metric

VIT, RN50 = "ViT-B-32::openai", "RN50::openai"
TEXTS = ["a photo of a cat", "a diagram", "Ünïcödé café"]


@pytest.fixture(scope="module")
def exports(onnx_export) -> dict[str, str]:
    return {name: onnx_export(name) for name in (VIT, RN50)}


def served(exports: dict[str, str], *names: str) -> list[str]:
    return [f"{name}={exports[name]}" for name in names]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def states(url: str) -> dict[str, str]:
    return {name: model["state"] for name, model in httpx.get(f"{url}/readyz").json()["models"].items()}


def test_each_model_answers_as_its_encoder_and_mixed_traffic_has_no_errors(
    exports, encoder_for, photo_paths
) -> None:
    expected = {name: encoder_for(name, "onnx").encode([*TEXTS, *photo_paths[:2]]) for name in (VIT, RN50)}
    bodies = [{"text": t} for t in TEXTS] + [{"image": b64(p.read_bytes())} for p in photo_paths[:2]]
    with running_server(model=served(exports, VIT, RN50), max_wait_ms=2) as (url, _):
        assert states(url) == {VIT: "ready", RN50: "unloaded"}  # only the first loads at start
        listed = httpx.get(f"{url}/v1/models").json()["data"]
        assert [(m["id"], m["dim"], m["family"]) for m in listed] == [
            (VIT, 512, "open_clip"),
            (RN50, 1024, "open_clip"),
        ]

        default = httpx.post(f"{url}/encode", json={"inputs": bodies}).json()
        assert default["model"] == VIT and default["dim"] == 512
        assert cosines(np.asarray(default["embeddings"]), expected[VIT]).min() > 0.9999
        with Client(url) as client:
            rn50 = client.encode([*TEXTS, *photo_paths[:2]], model=RN50)
            assert rn50.shape == (5, 1024) and cosines(rn50, expected[RN50]).min() > 0.9999
            ranked = client.rank("a photo of a cat", photo_paths[:2], model=RN50)
        scores = expected[RN50][3:] @ expected[RN50][0]
        assert [m.index for m in ranked] == list(np.argsort(-scores))
        openai = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS, "model": "RN50"}).json()
        assert openai["model"] == RN50  # OpenAI's name of the model resolves to the served entry
        got = np.asarray([d["embedding"] for d in openai["data"]])
        assert cosines(got, expected[RN50][:3]).min() > 0.9999

        unknown = httpx.post(f"{url}/encode", json={"inputs": bodies[:1], "model": "ViT-L-14::openai"})
        assert unknown.status_code == 404
        assert VIT in unknown.json()["detail"] and RN50 in unknown.json()["detail"]
        assert "ViT-L-14::openai" in unknown.json()["detail"]
        too_long = httpx.post(f"{url}/encode", json={"inputs": bodies[:1], "model": "x" * 300})
        assert too_long.status_code == 422 and "model" in too_long.json()["detail"]

        async def mixed_traffic() -> list[tuple[str, int, httpx.Response]]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                plan = [((VIT, RN50)[i % 2], i % len(bodies)) for i in range(48)]
                answers = await asyncio.gather(
                    *(http.post("/encode", json={"inputs": [bodies[j]], "model": m}) for m, j in plan)
                )
            return [(m, j, a) for (m, j), a in zip(plan, answers, strict=True)]

        before = {
            name: metric(url, "clipserve_items_total", model=name, modality="image") for name in (VIT, RN50)
        }
        answered = asyncio.run(mixed_traffic())
        for name, position, answer in answered:
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-clipserve-model"] == name
            vector = np.asarray(answer.json()["embeddings"])
            assert cosines(vector, expected[name][position : position + 1])[0] > 0.9999
        for name in (VIT, RN50):  # each model has its own batchers and metrics labels
            images = sum(1 for m, j, _ in answered if m == name and "image" in bodies[j])
            after = metric(url, "clipserve_items_total", model=name, modality="image")
            assert after - before[name] == images > 0


def test_concurrent_first_requests_share_one_load(exports) -> None:
    with running_server(model=served(exports, VIT, RN50)) as (url, _):

        async def first_requests() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                body = {"inputs": [{"text": "lazy"}], "model": RN50}
                return await asyncio.gather(*(http.post("/encode", json=body) for _ in range(8)))

        answers = asyncio.run(first_requests())
        assert [a.status_code for a in answers] == [200] * 8
        assert metric(url, "clipserve_model_loads_total", model=RN50, outcome="ok") == 1
        assert states(url)[RN50] == "ready"


def test_idle_models_are_unloaded_and_memory_returned_then_reloaded(exports) -> None:
    ttl = 1.0
    with running_server(model=served(exports, VIT, RN50), model_ttl=ttl) as (url, _):
        body = {"inputs": [{"text": "a photo of a dog"}], "model": RN50}
        deadline = time.monotonic() + 30  # the default model unloads too: wait for it first
        while states(url)[VIT] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert states(url) == {VIT: "unloaded", RN50: "unloaded"}
        idle = resident_bytes()
        first = np.asarray(httpx.post(f"{url}/encode", json=body, timeout=120).json()["embeddings"])
        loaded = resident_bytes()
        assert states(url)[RN50] == "ready"
        deadline = time.monotonic() + 30
        while states(url)[RN50] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.1)
        unloaded = resident_bytes()
        assert states(url)[RN50] == "unloaded"
        assert metric(url, "clipserve_model_unloads_total", model=RN50, reason="idle") == 1
        assert metric(url, "clipserve_model_loaded", model=RN50) == 0
        grown = loaded - idle
        assert grown > 100 * 2**20, f"loading RN50 added only {grown / 2**20:.0f} MiB"
        assert unloaded - idle < 0.25 * grown, (
            f"RSS idle {idle / 2**20:.0f} MiB, loaded {loaded / 2**20:.0f}, unloaded {unloaded / 2**20:.0f}"
        )
        again = httpx.post(f"{url}/encode", json=body, timeout=120)
        assert again.status_code == 200
        assert cosines(np.asarray(again.json()["embeddings"]), first)[0] > 0.99999
        assert metric(url, "clipserve_model_loads_total", model=RN50, outcome="ok") == 2


def bounded_flags(exports: dict[str, str], *flags: str) -> list[str]:
    """Serve ViT-B-32 and RN50 with a memory bound 128 MiB over what a fresh server holds with
    ViT-B-32 loaded and warm (RN50 adds about 310): room for RN50 only once ViT-B-32 goes, and the
    slack an unload leaves behind (measured in a first start: the bound is on the process's RSS,
    which the models earlier tests loaded would skew)."""
    # Without warm-up: the bound is sized by what one text request leaves held, and warm image
    # arenas (ViT-B-32 at start, RN50 on its load) would move it; eviction is what is tested here.
    models = [
        "--no-warmup",
        *(flag for name in (VIT, RN50) for flag in ("--model", f"{name}={exports[name]}")),
    ]
    with server_process(None, *models) as (url, process):
        httpx.post(f"{url}/encode", json={"inputs": [{"text": "warm"}]}, timeout=120)
        bound_gib = (resident_mib(process.pid) + 128) / 1024
    return [*models, "--max-memory-gb", f"{bound_gib:.4f}", *flags]


@pytest.mark.slow
def test_memory_bound_refuses_or_evicts(exports) -> None:
    body = {"inputs": [{"text": "a photo of a bird"}], "model": RN50}
    with server_process(None, *bounded_flags(exports)) as (url, _):
        refused = httpx.post(f"{url}/encode", json=body, timeout=120)
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        assert RN50 in refused.json()["detail"] and "max_memory_gb" in refused.json()["detail"]
        assert states(url) == {VIT: "ready", RN50: "unloaded"}  # loaded, measured, over, unloaded again
        again = httpx.post(f"{url}/encode", json=body, timeout=120)
        assert again.status_code == 503 and "would pass max_memory_gb" in again.json()["detail"]
        assert metric(url, "clipserve_model_loads_total", model=RN50, outcome="refused") == 2
        assert metric(url, "clipserve_model_loads_total", model=RN50, outcome="ok") == 1  # the measuring one
        assert httpx.post(f"{url}/encode", json={"inputs": [{"text": "still serving"}]}).status_code == 200

    with server_process(
        None, *bounded_flags(exports, "--memory-policy", "evict", "--min-residency-s", "0")
    ) as (
        url,
        _,
    ):
        assert httpx.post(f"{url}/encode", json=body, timeout=120).status_code == 200
        assert states(url) == {VIT: "unloaded", RN50: "ready"}
        assert metric(url, "clipserve_model_unloads_total", model=VIT, reason="memory") == 1
        back = httpx.post(f"{url}/encode", json={"inputs": [{"text": "the default again"}]}, timeout=120)
        assert back.status_code == 200 and back.json()["model"] == VIT
        assert states(url) == {VIT: "ready", RN50: "unloaded"}


def test_evicting_waits_for_the_minimum_residency(exports) -> None:
    """Alternating requests for two models that do not fit together: the one loaded stays its
    minimum residency, so the other is refused with a Retry-After instead of loaded back to back."""
    body = {"inputs": [{"text": "a photo of a bird"}], "model": RN50}
    with server_process(
        None, *bounded_flags(exports, "--memory-policy", "evict", "--min-residency-s", "60")
    ) as (
        url,
        _,
    ):
        refused = httpx.post(f"{url}/encode", json=body, timeout=120)
        assert refused.status_code == 503 and "min_residency_s=60" in refused.json()["detail"]
        assert 40 <= int(refused.headers["Retry-After"]) <= 60
        assert states(url) == {VIT: "ready", RN50: "unloaded"}
        assert metric(url, "clipserve_model_unloads_total", model=VIT, reason="memory") == 0
