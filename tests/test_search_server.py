"""A served index: ``POST /search``, its thumbnails (from the indexed folders only), and
clip-retrieval's clip-back API (``/knn-service``, ``/metadata``, ``/indices-list``)."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from clipserve.index import Index
from clipserve.index.collect import entries_from, media_filter
from tests.server_helpers import resident_mib, running_server

NAME = "ViT-B-32::openai"
KEY = "search-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(encoder_for, photos_dir, tmp_path_factory):
    """An index of a copy of the shared photos (and a symbolic link out of their folder), served
    with an API key; yields ``(url, index, photos)``."""
    encoder = encoder_for(NAME, "onnx")
    work = tmp_path_factory.mktemp("served-index")
    photos = work / "photos"
    shutil.copytree(photos_dir, photos, ignore=shutil.ignore_patterns("*.csv"))
    outside = work / "private.png"
    Image.new("RGB", (32, 32), "red").save(outside)
    (photos / "escape.png").symlink_to(outside)
    index = Index.create(work / "index", encoder)
    index.update(entries_from([photos], media_filter(False)))
    with running_server(index=str(work / "index"), weights=encoder.info()["weights"], api_key=KEY) as (
        url,
        _,
    ):
        yield url, index, photos


def post(url: str, path: str, body, key: bool = True) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=AUTH if key else {}, timeout=60)


def test_search_answers_as_the_library(served, photos_dir) -> None:
    url, index, _ = served
    answer = post(url, "/search", {"query": {"text": "a photo of a horse"}, "k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = index.search("a photo of a horse", k=5, modality="text")
    assert body["model"] == NAME and body["index"] == "index"
    assert [r["id"] for r in body["results"]] == [h.id for h in expected]
    assert np.allclose([r["score"] for r in body["results"]], [h.score for h in expected], atol=1e-5)
    assert body["results"][0]["thumbnail"].startswith("/search/thumbnail/")
    image = base64.b64encode((photos_dir / "coffee.png").read_bytes()).decode()
    by_image = post(url, "/search", {"query": {"image": image}, "k": 1}).json()["results"]
    assert by_image[0]["id"].endswith("coffee.png")
    vector = index.query_vector("a rocket", modality="text").tolist()
    by_vector = post(url, "/search", {"query": {"vector": vector}, "k": 3}).json()["results"]
    assert [r["id"] for r in by_vector] == [h.id for h in index.search(vector=np.asarray(vector), k=3)]
    like = post(url, "/search", {"query": {"id": by_image[0]["id"]}, "k": 2, "filter": {"modality": "image"}})
    assert by_image[0]["id"] not in [r["id"] for r in like.json()["results"]]
    deduplicated = post(url, "/search", {"query": {"text": "x"}, "k": 5, "dedup": 0.9}).json()["results"]
    kept = [index.store.vector_of(index.store.key_of(r["id"])) for r in deduplicated]
    assert all(float(a @ b) < 0.9 for i, a in enumerate(kept) for b in kept[i + 1 :])
    ready = httpx.get(f"{url}/readyz", headers=AUTH).json()
    assert ready["index"]["items"] == len(index) and ready["index"]["search"] == "exact"


def test_search_errors_and_auth(served) -> None:
    url, _, _ = served
    assert post(url, "/search", {"query": {"text": "x"}}, key=False).status_code == 401
    wrong = post(url, "/search", {"query": {"text": "x"}, "model": "RN50::openai"})
    assert wrong.status_code == 400 and "holds vectors of ViT-B-32::openai" in wrong.json()["detail"]
    two = post(url, "/search", {"query": {"text": "x", "id": "y"}})
    assert two.status_code == 422 and "exactly one of" in two.json()["detail"]
    short = post(url, "/search", {"query": {"vector": [0.1, 0.2]}})
    assert short.status_code == 422 and "512 values" in short.json()["detail"]
    missing = post(url, "/search", {"query": {"id": "no-such-item"}})
    assert missing.status_code == 422 and "no item" in missing.json()["detail"]
    bad_filter = post(url, "/search", {"query": {"text": "x"}, "filter": {"colour": "red"}})
    assert bad_filter.status_code == 422 and "unknown filter" in bad_filter.json()["detail"]
    assert post(url, "/search", {"query": {"text": "x"}, "k": 5000}).status_code == 422


def test_thumbnails_come_from_the_indexed_folders_only(served) -> None:
    url, _, _ = served
    results = post(url, "/search", {"query": {"text": "x"}, "k": 20}).json()["results"]
    inside = next(r for r in results if r["id"].endswith("coffee.png"))
    thumb = httpx.get(f"{url}{inside['thumbnail']}", headers=AUTH)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    assert httpx.get(f"{url}{inside['thumbnail']}").status_code == 401
    escaped = next(r for r in results if r["id"].endswith("private.png"))  # the link's target was indexed
    refused = httpx.get(f"{url}{escaped['thumbnail']}", headers=AUTH)
    assert refused.status_code == 404
    missing = httpx.get(f"{url}/search/thumbnail/99999", headers=AUTH)
    assert missing.status_code == 404  # outside the folders or not there: the same answer
    assert refused.json()["detail"].startswith("no image thumbnail for item")
    assert missing.json()["detail"] == "no image thumbnail for item 99999"


def test_clip_back_api(served) -> None:
    url, index, _ = served
    assert httpx.get(f"{url}/indices-list", headers=AUTH).json() == ["index"]
    body = {"text": "a photo of a cat", "modality": "image", "num_images": 4, "indice_name": "index"}
    results = post(url, "/knn-service", body).json()
    expected = index.search("a photo of a cat", k=4, filter={"modality": "image"}, modality="text")
    assert [r["image_path"] for r in results] == [h.metadata["path"] for h in expected]
    assert all({"id", "similarity", "caption", "image_path"} <= set(r) for r in results)
    picture = next(r for r in results if "image" in r)
    assert Image.open(io.BytesIO(base64.b64decode(picture["image"]))).format == "JPEG"
    embedding = index.query_vector("a cat", modality="text").tolist()
    by_embedding = post(url, "/knn-service", {"embedding_input": embedding, "num_images": 2}).json()
    assert len(by_embedding) == 2
    deduplicated = post(url, "/knn-service", {**body, "deduplicate": True, "num_images": 10}).json()
    assert len(deduplicated) < 10  # random weights: the photos are near-duplicates of each other
    metadata = post(url, "/metadata", {"ids": [r["id"] for r in results[:2]], "indice_name": "index"}).json()
    assert [m["id"] for m in metadata] == [r["id"] for r in results[:2]]
    assert metadata[0]["metadata"]["image_path"] == results[0]["image_path"]
    unknown = post(url, "/knn-service", {**body, "indice_name": "laion5B"})
    assert unknown.status_code == 404 and "not served here" in unknown.json()["detail"]
    assert post(url, "/knn-service", {"modality": "image", "num_images": 3}).status_code == 422


def test_clip_retrievals_own_client_queries_the_index(served, encoder_for) -> None:
    """clip-retrieval's ``ClipClient`` (2.45), unmodified, posts its JSON with no Content-Type header;
    loaded from its file, since the package's ``__init__`` imports its own server (flask, faiss...)."""
    import importlib.util

    package = importlib.util.find_spec("clip_retrieval")
    assert package is not None, "`make setup` installs clip-retrieval (--no-deps)"
    spec = importlib.util.spec_from_file_location(
        "clip_client", os.path.join(os.path.dirname(package.origin), "clip_client.py")
    )
    clip_client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clip_client)
    _, index, _ = served
    weights = encoder_for(NAME, "onnx").info()["weights"]
    with running_server(index=str(index.directory), weights=weights) as (url, _):
        client = clip_client.ClipClient(
            url=f"{url}/knn-service", indice_name="index", num_images=3, deduplicate=False,
            use_safety_model=False, use_violence_detector=False,
        )  # fmt: skip
        results = client.query(text="a photo of a cat")
    expected = index.search("a photo of a cat", k=3, filter={"modality": "image"}, modality="text")
    assert [r["image_path"] for r in results] == [h.metadata["path"] for h in expected]


def test_item_keys_past_sqlites_integers_are_refused_not_500(served) -> None:
    """Round 3: an id of 2**63 raised ``OverflowError`` in SQLite (an unhandled 500)."""
    url, _, _ = served
    for path in (f"/search/thumbnail/{2**63}", "/search/thumbnail/-1"):
        assert httpx.get(f"{url}{path}", headers=AUTH).status_code == 422
    assert post(url, "/metadata", {"ids": [2**63]}).status_code == 422
    assert post(url, "/metadata", {"ids": [2**63 - 1]}).json() == []


@pytest.mark.slow
def test_concurrent_thumbnails_of_a_huge_jpeg_stay_within_the_decode_budget(
    encoder_for, tmp_path, monkeypatch
) -> None:
    """Round 3: six thumbnails of one 6000 x 6000 JPEG at once grew the server by ~1.6 GiB; they
    took no budget. Now they reserve from the process's budget and decode at 1/8 scale (draft)."""
    from clipserve.index.store import Entry
    from clipserve.preprocess import budget as budgets

    encoder = encoder_for(NAME, "onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (750, 750, 3), np.uint8)
    Image.fromarray(noise).resize((6000, 6000)).save(photos / "huge.jpg", quality=90)
    path = photos / "huge.jpg"
    entry = Entry(str(path), "image", path=str(path), size=path.stat().st_size, mtime=1.0, root=str(photos))
    index = Index.create(tmp_path / "index", encoder)
    index.update([entry], {entry.id: np.ones(encoder.dim, np.float32) / np.sqrt(encoder.dim)})
    key = index.store.key_of(entry.id)
    process = budgets.DecodeBudget(0)
    monkeypatch.setattr(budgets, "_PROCESS_BUDGET", process)  # this server's budget alone
    held, most = [], [0]
    original = budgets.DecodeBudget.reserve

    @contextlib.contextmanager
    def reserve(self, nbytes, *args, **kwargs):
        with original(self, nbytes, *args, **kwargs):
            held.append(nbytes)
            most[0] = max(most[0], self.used)
            yield

    monkeypatch.setattr(budgets.DecodeBudget, "reserve", reserve)
    budget_mb = 200
    with running_server(
        index=str(tmp_path / "index"), weights=encoder.info()["weights"], api_key=KEY, max_decode_mb=budget_mb
    ) as (url, _):
        held.clear()  # the warm-up's sample image
        before = resident_mib(os.getpid())
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], resident_mib(os.getpid()))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(
                    lambda _: httpx.get(f"{url}/search/thumbnail/{key}", headers=AUTH, timeout=60), range(6)
                )
            )
        done.set()
        sampler.join()
    assert [a.status_code for a in answers] == [200] * 6
    assert max(Image.open(io.BytesIO(answers[0].content)).size) == 256
    assert len(held) == 6 and most[0] <= process.capacity == budget_mb * 2**20
    assert peak[0] - before < budget_mb, f"grew {peak[0] - before:.0f} MiB"
