"""Warm-up on load: a full batch through each tower, leaving no trace in caches or metrics."""

from __future__ import annotations

import httpx
import numpy as np

from clipserve.pipeline import Pipeline
from tests.server_helpers import running_server
from tests.test_server import metric

NAME = "ViT-B-32::openai"


def test_every_tower_runs_one_full_batch_on_load(new_encoder, vit_onnx_export, monkeypatch) -> None:
    batches: list[tuple[str, int]] = []
    original = Pipeline.run_batch

    def spy(self, modality, payloads):
        batches.append((modality, len(payloads)))
        return original(self, modality, payloads)

    monkeypatch.setattr(Pipeline, "run_batch", spy)
    encoder = new_encoder(NAME, weights=vit_onnx_export, text_cache=8, batch_size=16)
    assert sorted(batches) == [("image", 8), ("text", 16)]  # the CPU image cap, the batch size
    assert encoder.info()["warmup_s"] > 0
    assert len(encoder.pipeline.text_cache) == 0, "the warm-up text must not be cached"

    batches.clear()
    cold = new_encoder(NAME, weights=vit_onnx_export, warmup=False)
    assert batches == [] and cold.info()["warmup_s"] is None


def test_warm_and_cold_encoders_give_the_same_vectors(new_encoder, vit_onnx_export, photo_paths) -> None:
    inputs = ["a photo of a cat", photo_paths[0]]
    warm = new_encoder(NAME, weights=vit_onnx_export).encode(inputs)
    cold = new_encoder(NAME, weights=vit_onnx_export, warmup=False).encode(inputs)
    np.testing.assert_allclose(warm, cold, atol=1e-5)


def test_a_server_warms_up_before_it_is_ready_and_counts_no_warm_up_batch(vit_onnx_export) -> None:
    served = {"model": NAME, "backend": "onnx", "precision": "fp32"}
    with running_server(weights=vit_onnx_export) as (url, _):
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200 and ready.json()["warmup_s"] > 0
        assert metric(url, "clipserve_model_info", running_backend="onnx", **served) == 1
        for modality in ("image", "text"):
            assert metric(url, "clipserve_batch_size_count", modality=modality, **served) == 0
        httpx.post(f"{url}/encode", json={"inputs": [{"text": "a"}]}).raise_for_status()
        assert metric(url, "clipserve_batch_size_count", modality="text", **served) == 1


def test_limits_that_refuse_the_samples_leave_the_model_unwarmed_not_broken(
    new_encoder, vit_onnx_export, caplog
) -> None:
    encoder = new_encoder(NAME, weights=vit_onnx_export, max_pixels=50_000, max_text_chars=5)
    assert "image is not warmed up: its limits refuse the sample image" in caplog.text
    assert "text is not warmed up" in caplog.text
    assert encoder.encode_text(["a cat"]).shape == (1, 512)
