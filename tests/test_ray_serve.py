"""Ray Serve: the HTTP service as a deployment of 2 replicas on a local Ray of 2 CPUs (127.0.0.1):
the plain server's answers, 64 concurrent clients, and a replica killed under load."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import cosines

pytestmark = pytest.mark.slow
NAME = "ViT-B-32::openai"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(local_ray, vit_onnx_export):
    """ViT-B-32 served by 2 replicas of one CPU each behind Ray Serve's proxy."""
    from ray import serve

    import clipserve.ray
    from clipserve.ray.serve import http_options
    from clipserve.settings import ServerSettings, resolve

    port = free_port()
    settings = dict(model=NAME, weights=vit_onnx_export, replicas=2, replica_cpus=1, ray_request_timeout_s=15)
    serve.start(http_options=http_options(resolve(ServerSettings, host="127.0.0.1", port=port, **settings)))
    application = clipserve.ray.app(**settings)
    serve.run(application, name="clipserve", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete("clipserve")


def test_routes_answer_as_the_plain_server(served, encoder_for, photo_paths) -> None:
    reference = encoder_for(NAME, "onnx")
    texts = ["a photo of a cat", "Ünïcödé — 東京"]
    with httpx.Client(base_url=served, timeout=60) as http:
        answer = http.post("/v1/embeddings", json={"model": NAME, "input": texts}).json()
        vectors = np.asarray([row["embedding"] for row in answer["data"]], dtype=np.float32)
        assert cosines(vectors, reference.encode_text(texts)).min() >= 0.9999
        import base64

        images = [base64.b64encode(Path(p).read_bytes()).decode() for p in photo_paths[:3]]
        body = {"inputs": [{"text": texts[0]}, *({"image": i} for i in images)]}
        encoded = np.asarray(http.post("/encode", json=body).json()["embeddings"], dtype=np.float32)
        expected = np.concatenate([reference.encode_text(texts[:1]), reference.encode_image(photo_paths[:3])])
        assert cosines(encoded, expected).min() >= 0.9999
        ranked = http.post(
            "/rank", json={"query": {"image": images[0]}, "candidates": [{"text": t} for t in texts]}
        ).json()
        local = reference.rank(photo_paths[0], texts)
        assert [m["index"] for m in ranked["matches"]] == [m.index for m in local]
        bad = http.post("/encode", json={"inputs": [{"text": "ok"}, {"image": "bm90IGFuIGltYWdl"}]})
        assert bad.status_code == 422 and bad.json()["index"] == 1
        assert http.get("/readyz").json()["status"] == "ready"
        assert "clipserve_requests_total" in http.get("/metrics").text


def _load(url: str, clients: int, requests_each: int, outcomes: list) -> None:
    """``clients`` threads posting one text per request; each outcome is (status, text, vector or
    None, detail). The client retries 503s, as clipserve's client does."""
    from clipserve.client import Client, ServerError

    def client(number: int) -> None:
        with Client(url, timeout_s=120) as session:
            for i in range(requests_each):
                text = f"client {number} request {i}"
                try:
                    outcomes.append((200, text, session.encode([text])[0], ""))
                except ServerError as exc:
                    outcomes.append((exc.status, text, None, str(exc)))
                except httpx.HTTPError as exc:
                    outcomes.append((0, text, None, f"{type(exc).__name__} {exc}"))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a client hung"


def _assert_all_answered_right(outcomes: list, expected_count: int, reference) -> None:
    assert len(outcomes) == expected_count, "a request got no outcome"
    failed = [(status, text, detail) for status, text, vector, detail in outcomes if vector is None]
    assert not failed, failed[:5]
    texts = [text for _, text, _, _ in outcomes]
    got = np.stack([vector for _, _, vector, _ in outcomes])
    assert cosines(got, reference.encode_text(texts)).min() >= 0.9999


def test_64_concurrent_clients_get_no_errors(served, encoder_for) -> None:
    outcomes: list = []
    _load(served, clients=64, requests_each=4, outcomes=outcomes)
    _assert_all_answered_right(outcomes, 64 * 4, encoder_for(NAME, "onnx"))


def test_a_killed_replica_loses_no_request_silently(served, local_ray, encoder_for) -> None:
    """Kill one of the 2 replicas under load: every request is answered (the client retries a
    503), none with a wrong or empty vector, and Ray replaces the replica."""
    from ray import serve

    outcomes: list = []
    loader = threading.Thread(target=_load, args=(served, 32, 16, outcomes))
    loader.start()
    deadline = time.monotonic() + 120  # kill once the load flows, with most of it still to come
    while len(outcomes) < 32 and time.monotonic() < deadline:
        time.sleep(0.05)
    replicas = [
        a for a in local_ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]
    ]
    assert len(replicas) == 2
    victim = local_ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    local_ray.kill(victim, no_restart=True)
    loader.join(timeout=900)
    _assert_all_answered_right(outcomes, 32 * 16, encoder_for(NAME, "onnx"))
    logs = Path(local_ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    deadline = time.monotonic() + 30  # the proxy's log is written by Ray's logger: it may lag
    while not (lost := sum(p.read_text().count("lost its replica") for p in logs.glob("proxy_*.log"))):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lost > 0, "no request was in flight on the killed replica: the test proved nothing"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = serve.status().applications["clipserve"].deployments["clipserve"]
        if status.status == "HEALTHY" and status.replica_states.get("RUNNING") == 2:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the killed replica was not replaced: {status}")


def test_the_builder_takes_serve_run_arguments_and_keywords() -> None:
    """``serve run clipserve.ray:app replicas=3 …`` (strings, through Ray's builder check) and
    Python keywords build the same deployment; autoscaling and resources map to Ray's options."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    import clipserve.ray

    built = call_user_app_builder_with_args_if_necessary(
        clipserve.ray.app, {"model": NAME, "replicas": "3", "replica_cpus": "4"}
    )
    config = built._bound_deployment._deployment_config
    assert config.num_replicas == 3 and config.max_ongoing_requests == 128
    assert built._bound_deployment.ray_actor_options["num_cpus"] == 4.0
    scaled = clipserve.ray.app(model=NAME, max_replicas=8, target_ongoing_requests=32, replica_gpus=1)
    autoscaling = scaled._bound_deployment._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (
        1,
        8,
        32,
    )
    assert scaled._bound_deployment.ray_actor_options["num_gpus"] == 1.0
    with pytest.raises(ValueError, match="TLS is Ray Serve"):
        clipserve.ray.app(model=NAME, ssl_certfile="cert.pem")
