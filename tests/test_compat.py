"""The compat APIs (``--compat weaviate,immich,tei,infinity``) on a real server: each answers the
vectors ``/encode`` answers for the same inputs, in its own shapes, errors included, behind the
same API key, limits and metrics; driven by the products' own clients where they install here
(huggingface_hub's ``InferenceClient`` for TEI, OpenAI's client as infinity documents it)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from fastapi import APIRouter
from PIL import Image

from clipserve.server.apis import COMPAT_PATHS, api_of
from clipserve.server.compat import BUILDERS, compat_routers
from clipserve.server.compat.immich import zoo_name
from clipserve.settings import COMPAT_APIS, ServerSettings
from tests.server_helpers import running_server
from tests.test_server import metric

NAME = "ViT-B-32::openai"
KEY = "compat-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_ITEMS = 8


@pytest.fixture(scope="module")
def server(onnx_export):
    weights = onnx_export(NAME)
    with running_server(
        weights=weights,
        api_key=KEY,
        compat=["weaviate,immich", "tei", "infinity"],
        max_items=MAX_ITEMS,
        max_body_mb=2,
        allow_url=True,
        allow_private_urls=True,
    ) as (url, _):
        yield url


@pytest.fixture(scope="module")
def photos(photo_paths) -> list[bytes]:
    return [path.read_bytes() for path in photo_paths[:2]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, media_type: str = "image/jpeg") -> str:
    return f"data:{media_type};base64,{b64(data)}"


def encoded(url: str, inputs: list[dict]) -> np.ndarray:
    """The vectors clipserve's own ``/encode`` answers."""
    answer = httpx.post(f"{url}/encode", json={"inputs": inputs}, headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json()["embeddings"], dtype=np.float32)


def same(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float32), b, atol=2e-6)


# -- the table of paths, settings and docs ----------------------------------------------------------


def test_every_compat_route_is_in_the_table_under_its_api() -> None:
    settings = ServerSettings(compat=list(COMPAT_APIS))
    assert set(BUILDERS) == set(COMPAT_APIS)
    for name in COMPAT_APIS:
        router: APIRouter = BUILDERS[name](_FakePool(), settings)
        for route in router.routes:
            path = route.path
            if path == "/":
                assert api_of(path, "POST").name == name == "tei"
            else:
                assert COMPAT_PATHS[path].name == name, path
    paths = {route.path for router in compat_routers(_FakePool(), settings) for route in router.routes}
    assert paths == set(COMPAT_PATHS) | {"/"}


class _FakePool:
    """Building a router reads nothing from the pool."""


def test_compat_is_off_by_default_and_names_are_checked() -> None:
    assert ServerSettings().compat == []
    assert ServerSettings(compat="TEI, weaviate").compat == ["tei", "weaviate"]
    with pytest.raises(ValueError, match="unknown: milvus"):
        ServerSettings(compat=["tei,milvus"])


def test_docs_list_the_compat_routes(server, onnx_export) -> None:
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    for path in ("/vectorize", "/meta", "/predict", "/ping", "/embed", "/info", "/embeddings", "/models"):
        assert path in paths, path
    weights = onnx_export(NAME)
    with running_server(weights=weights) as (url, _):
        plain = httpx.get(f"{url}/openapi.json").json()["paths"]
        assert not {"/vectorize", "/predict", "/embed", "/embeddings"} & set(plain)
        assert httpx.post(f"{url}/embed", json={"inputs": "x"}).status_code == 404


# -- Weaviate multi2vec-clip ------------------------------------------------------------------------


def test_weaviate_vectorize_equals_encode(server, photos) -> None:
    body = {"texts": ["a photo of a cat", "日本語のテキスト 🐱"], "images": [b64(p) for p in photos]}
    answer = httpx.post(f"{server}/vectorize", json=body, headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    expected = encoded(
        server, [{"text": t} for t in body["texts"]] + [{"image": image} for image in body["images"]]
    )
    same(got["textVectors"], expected[:2])
    same(got["imageVectors"], expected[2:])
    assert np.allclose(np.linalg.norm(got["imageVectors"], axis=1), 1, atol=1e-5)
    only_texts = httpx.post(f"{server}/vectorize", json={"texts": ["a dog"]}, headers=AUTH).json()
    assert only_texts["imageVectors"] == [] and len(only_texts["textVectors"]) == 1
    empty = httpx.post(f"{server}/vectorize", json={"texts": [], "images": []}, headers=AUTH).json()
    assert empty == {"textVectors": [], "imageVectors": []}


def test_weaviate_vectorize_without_a_content_type(server) -> None:
    """Weaviate's multi2vec-clip client up to v1.25 (``vectorizer.go``) posts its JSON body with Go's
    default headers and no Content-Type."""
    body = json.dumps({"texts": ["a photo of a cat"], "images": []}).encode()
    headers = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip", **AUTH}
    answer = httpx.post(f"{server}/vectorize", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert "content-type" not in {k.lower() for k in answer.request.headers}
    same(answer.json()["textVectors"], encoded(server, [{"text": "a photo of a cat"}]))


def test_weaviate_errors_are_its_shape(server, photos) -> None:
    bad = httpx.post(
        f"{server}/vectorize",
        json={"texts": ["ok"], "images": [b64(photos[0]), b64(b"not an image")]},
        headers=AUTH,
    )
    assert bad.status_code == 422
    assert set(bad.json()) == {"error"} and "images[1]: " in bad.json()["error"]
    assert "item " not in bad.json()["error"]  # named once, as Weaviate numbers it
    too_many = httpx.post(
        f"{server}/vectorize", json={"texts": ["t"] * 5, "images": [b64(photos[0])] * 4}, headers=AUTH
    )
    assert too_many.status_code == 413 and "limit" in too_many.json()["error"]
    unauthorised = httpx.post(f"{server}/vectorize", json={"texts": ["t"]})
    assert unauthorised.status_code == 401 and "API key" in unauthorised.json()["error"]


def test_weaviate_meta_and_probes(server) -> None:
    assert httpx.get(f"{server}/meta", headers=AUTH).json()["model"] == NAME
    for probe in ("/.well-known/live", "/.well-known/ready"):
        answer = httpx.get(f"{server}{probe}")  # no key: Weaviate's readiness poll sends none
        assert answer.status_code == 204 and answer.content == b""


# -- immich machine learning ------------------------------------------------------------------------


def entries(kind: str, model: str = "ViT-B-32__openai") -> str:
    return json.dumps({"clip": {kind: {"modelName": model, "options": {}}}})


def predict(url: str, data: dict, files: dict | None = None, key: bool = True) -> httpx.Response:
    return httpx.post(f"{url}/predict", data=data, files=files, headers=AUTH if key else {}, timeout=60)


def test_immich_visual_and_textual_equal_encode(server, photos) -> None:
    answer = predict(server, {"entries": entries("visual")}, {"image": ("blob", photos[1])})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    width, height = Image.open(io.BytesIO(photos[1])).size
    assert (body["imageWidth"], body["imageHeight"]) == (width, height)
    assert isinstance(body["clip"], str) and " " not in body["clip"]  # immich hands it to pgvector as is
    same([json.loads(body["clip"])], encoded(server, [{"image": b64(photos[1])}]))
    text = predict(
        server, {"entries": entries("textual", "immich-app/ViT-B-32__openai"), "text": "a red car"}
    )
    assert set(text.json()) == {"clip"}
    same([json.loads(text.json()["clip"])], encoded(server, [{"text": "a red car"}]))


@pytest.mark.parametrize(
    ("immich", "zoo"),
    [
        ("ViT-B-32__openai", "ViT-B-32::openai"),
        ("immich-app/ViT-L-14__laion2b-s32b-b82k", "ViT-L-14::laion2b_s32b_b82k"),
        ("ViT-B-32__laion2b-s34b-b79k", "ViT-B-32::laion2b_s34b_b79k"),
        ("ViT-B-16-SigLIP-256__webli", "ViT-B-16-SigLIP-256::webli"),
        ("nllb-clip-base-siglip__v1", "nllb-clip-base-siglip::v1"),
        ("XLM-Roberta-Large-Vit-B-16Plus", "M-CLIP/XLM-Roberta-Large-Vit-B-16Plus"),
        ("ViT-B-32__no-such-tag", None),
        ("buffalo_l", None),
    ],
)
def test_immich_model_names_map_onto_the_zoo(immich, zoo) -> None:
    assert zoo_name(immich) == zoo


@pytest.mark.parametrize(
    ("data", "files", "status", "says"),
    [
        ({"entries": entries("visual", "ViT-X-99__nothing")}, "image", 404, "no counterpart"),
        ({"entries": entries("visual", "ViT-L-14__openai")}, "image", 404, "not served here"),
        (
            {"entries": json.dumps({"facial-recognition": {"detection": {"modelName": "buffalo_l"}}})},
            "image",
            422,
            "not facial-recognition",
        ),
        ({"entries": "{not json"}, "image", 422, "Invalid request format"),
        ({"entries": json.dumps({"clip": {"visual": {}}})}, "image", 422, "modelName"),
        ({"entries": entries("visual")}, None, 422, "Either image or text"),
        ({"entries": entries("textual")}, "image", 422, "needs a text"),
        ({"entries": entries("visual")}, "corrupt", 422, "image"),
        ({}, "image", 422, "entries"),
    ],
)
def test_immich_errors_are_its_shape(server, photos, data, files, status, says) -> None:
    parts = (
        {"image": ("blob", b"\xff\xd8 not a jpeg" if files == "corrupt" else photos[0])} if files else None
    )
    answer = predict(server, data, parts)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"detail"} and says in str(answer.json()["detail"])


def test_immich_ping_and_auth(server, photos) -> None:
    ping = httpx.get(f"{server}/ping")
    assert ping.status_code == 200 and ping.text == "pong"
    answer = predict(server, {"entries": entries("visual")}, {"image": ("blob", photos[0])}, key=False)
    assert answer.status_code == 401 and "API key" in answer.json()["detail"]


# -- TEI --------------------------------------------------------------------------------------------


def test_tei_through_huggingface_hubs_client(server, monkeypatch) -> None:
    from huggingface_hub import InferenceClient, constants

    # the suite sets HF_HUB_OFFLINE (no hub); this client reaches only the loopback server
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)

    vector = InferenceClient(model=server, api_key=KEY).feature_extraction("a photo of a cat")
    assert vector.shape == (1, 512)
    same(vector, encoded(server, [{"text": "a photo of a cat"}]))
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError, match="401"):
        InferenceClient(model=server, api_key="wrong").feature_extraction("x")


def test_tei_embed_lists_truncation_and_errors(server) -> None:
    texts = ["one", "", "two " * 200]
    answer = httpx.post(f"{server}/embed", json={"inputs": texts}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    same(answer.json(), encoded(server, [{"text": t} for t in texts]))
    refused = httpx.post(f"{server}/embed", json={"inputs": texts, "truncate": False}, headers=AUTH)
    assert refused.status_code == 422
    assert refused.json()["error_type"] == "Validation" and "inputs[2]" in refused.json()["error"]
    fine = httpx.post(f"{server}/embed", json={"inputs": texts[:2], "truncate": False}, headers=AUTH)
    assert fine.status_code == 200
    for body, status, kind in [
        ({"inputs": []}, 400, "Empty"),
        ({"inputs": "x", "normalize": False}, 422, "Validation"),
        ({"inputs": "x", "truncation_direction": "Left"}, 422, "Validation"),
        ({"inputs": ["x"] * (MAX_ITEMS + 1)}, 413, "Validation"),
    ]:
        error = httpx.post(f"{server}/embed", json=body, headers=AUTH)
        assert error.status_code == status, (body, error.text)
        assert set(error.json()) == {"error", "error_type"} and error.json()["error_type"] == kind


def test_tei_info_and_health(server) -> None:
    info = httpx.get(f"{server}/info", headers=AUTH).json()
    assert info["model_id"] == NAME and info["max_input_length"] == 77
    assert info["max_client_batch_size"] == MAX_ITEMS
    assert httpx.get(f"{server}/info").status_code == 401
    health = httpx.get(f"{server}/health")
    assert health.status_code == 200 and health.json()["unix"] > 0


# -- infinity ---------------------------------------------------------------------------------------


def test_infinity_modalities_through_openais_client(server, photos, loopback_files) -> None:
    from openai import OpenAI

    files_url, files = loopback_files
    files["/photo.jpg"] = photos[0]
    client = OpenAI(base_url=server, api_key=KEY)
    images = client.embeddings.create(
        model=NAME, input=[data_uri(photos[1]), f"{files_url}/photo.jpg"], extra_body={"modality": "image"}
    )
    same(
        [d.embedding for d in images.data],
        encoded(server, [{"image": b64(photos[1])}, {"image": b64(photos[0])}]),
    )
    text = client.embeddings.create(model="default/not-specified", input="a photo of a cat")
    same([text.data[0].embedding], encoded(server, [{"text": "a photo of a cat"}]))
    assert text.model == NAME and text.usage.prompt_tokens > 0
    raw = httpx.post(
        f"{server}/embeddings", json={"input": "x", "encoding_format": "base64"}, headers=AUTH
    ).json()
    assert raw["id"].startswith("infinity-") and raw["created"] > 0
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    same([vector], encoded(server, [{"text": "x"}]))
    listed = httpx.get(f"{server}/models", headers=AUTH).json()
    assert [m["id"] for m in listed["data"]] == [NAME]


def test_infinity_errors_are_infinitys(server, photos) -> None:
    """infinity answers a bad input with 400 (OpenAI's client raises ``BadRequestError``), and its
    error's ``code`` is the HTTP status."""
    from openai import BadRequestError, OpenAI

    for body, status, says in [
        ({"input": [data_uri(b"RIFF....WAVE", "audio/wav")], "modality": "image"}, 400, "audio"),
        ({"input": ["a"], "model": "ViT-H-14::laion2b_s32b_b79k"}, 404, "not served"),
        ({"input": ["a"], "dimensions": 256}, 400, "dimensions"),
        ({"input": [data_uri(b"junk")], "modality": "image"}, 400, "image"),
        ({"input": ["a"] * (MAX_ITEMS + 1)}, 413, "limit"),
    ]:
        answer = httpx.post(f"{server}/embeddings", json=body, headers=AUTH)
        assert answer.status_code == status, (body, answer.text)
        error = answer.json()["error"]
        assert says in error["message"] and error["code"] == status, answer.text
    client = OpenAI(base_url=server, api_key=KEY)
    with pytest.raises(BadRequestError, match="item 1: "):
        client.embeddings.create(
            model=NAME, input=[data_uri(photos[0]), data_uri(b"junk")], extra_body={"modality": "image"}
        )


# -- the same limits and metrics for all --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/vectorize", {"error"}),
        ("/predict", {"detail"}),
        ("/embed", {"error", "error_type"}),
        ("/embeddings", {"error"}),
    ],
)
def test_an_oversized_body_is_refused_in_each_apis_shape(server, path, shape) -> None:
    answer = httpx.post(
        f"{server}{path}",
        content=b"x" * (3 * 1024 * 1024),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert answer.status_code == 413 and set(answer.json()) == shape


def test_requests_are_counted_by_api(server) -> None:
    before = {
        api: metric(server, headers=AUTH, name="clipserve_requests_total", api=api, status="200")
        for api in ("tei", "weaviate")
    }
    own = metric(server, headers=AUTH, name="clipserve_requests_total", api="clipserve", route="/encode")
    httpx.post(f"{server}/embed", json={"inputs": "counted"}, headers=AUTH)
    httpx.post(f"{server}/vectorize", json={"texts": ["counted"]}, headers=AUTH)
    assert (
        metric(server, headers=AUTH, name="clipserve_requests_total", api="tei", status="200", route="/embed")
        >= 1
    )
    assert (
        metric(server, headers=AUTH, name="clipserve_requests_total", api="tei", status="200")
        == before["tei"] + 1
    )
    assert (
        metric(server, headers=AUTH, name="clipserve_requests_total", api="weaviate", status="200")
        == before["weaviate"] + 1
    )
    assert (
        metric(server, headers=AUTH, name="clipserve_requests_total", api="clipserve", route="/encode") == own
    )
    assert metric(server, headers=AUTH, name="clipserve_items_total", modality="text") > 0
