"""The repeated-text cache: exact (a hit is the vector computed for that text), LRU, counted, and
shared by the library and the server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from clipserve.errors import InvalidInput
from clipserve.text_cache import TextCache
from tests.server_helpers import running_server

NAME = "ViT-B-32::openai"


def test_lru_keeps_the_most_recent_texts() -> None:
    cache = TextCache(2)
    for text in ("a", "b"):
        cache.put(text, np.full(4, ord(text), np.float32), 3)
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", np.zeros(4, np.float32), 1)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    vector, tokens = cache.get("a")
    assert tokens == 3 and not vector.flags.writeable
    with pytest.raises(ValueError):
        TextCache(0)


def test_the_library_returns_the_same_vectors_and_skips_the_model(
    random_model, cache_root, monkeypatch
) -> None:
    from clipserve.encoder import Encoder

    model = random_model(NAME)
    texts = ["a photo of a cat", "a dog", "a photo of a cat", "Ünïcödé"]
    with (
        Encoder(NAME, weights=model.checkpoint, cache_dir=cache_root, text_cache=8) as cached,
        Encoder(NAME, weights=model.checkpoint, cache_dir=cache_root) as plain,
    ):
        first = cached.encode_text(texts)
        assert np.array_equal(first, plain.encode_text(texts))
        calls = []
        original = cached.pipeline.run_batch
        monkeypatch.setattr(cached.pipeline, "run_batch", lambda *a: calls.append(a) or original(*a))
        again = cached.encode([*texts, "a new text"])
        assert np.array_equal(again[:4], first)  # exact: the stored vectors
        assert sum(len(payloads) for _, payloads in calls) == 1  # only the new text ran
        cache = cached.pipeline.text_cache
        assert (cache.hits, len(cache)) == (4, 4)  # 4 repeated texts; 4 distinct ones stored
        with pytest.raises(InvalidInput):
            cached.encode_text(["fine", "x" * 20_000])  # over max_text_chars
        assert cache.get("fine") is None  # nothing of a failed request is cached


def test_the_server_counts_hits_and_keeps_usage(onnx_export) -> None:
    export = onnx_export(NAME)
    with running_server(weights=export, text_cache=100) as (url, _), httpx.Client(base_url=url) as http:
        body = {"model": NAME, "input": ["a repeated query", "another"]}
        first = http.post("/v1/embeddings", json=body).json()
        second = http.post("/v1/embeddings", json=body).json()
        assert second["usage"] == first["usage"]
        assert [d["embedding"] for d in second["data"]] == [d["embedding"] for d in first["data"]]
        encoded = http.post("/encode", json={"inputs": [{"text": "a repeated query"}]}).json()
        assert encoded["embeddings"][0] == first["data"][0]["embedding"]
        metrics = http.get("/metrics").text
        hits = [
            line for line in metrics.splitlines() if line.startswith("clipserve_text_cache_lookups_total")
        ]
        counts = {("hit" if 'outcome="hit"' in line else "miss"): float(line.split()[-1]) for line in hits}
        assert counts == {"hit": 3.0, "miss": 2.0}
