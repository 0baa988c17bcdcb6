"""bf16 on CPUs with bf16 instructions (torch with bf16 weights): close to fp32 through every face;
refused where it would be emulated, and on the ONNX backend (ONNX Runtime's CPU provider has no bf16
kernels)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from clipserve.errors import UnsupportedModel
from clipserve.resources import BF16_FLAGS, cpu_flags
from tests.conftest import AWKWARD_TEXTS, cosines
from tests.server_helpers import running_server
from tests.test_server import metric

HAS_BF16 = bool(cpu_flags() & set(BF16_FLAGS))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32::openai", "RN50::openai"])
def test_bf16_is_close_to_fp32(name, random_model, encoder_for, photo_paths) -> None:
    from clipserve.encoder import Encoder

    checkpoint = random_model(name).checkpoint
    if not HAS_BF16:
        with pytest.raises(UnsupportedModel, match="would be emulated"):
            Encoder(name, backend="torch", precision="bf16", weights=checkpoint)
        return
    fp32 = encoder_for(name, "torch")
    with Encoder(name, backend="torch", precision="bf16", weights=checkpoint) as bf16:
        assert bf16.info()["precision"] == "bf16"
        assert cosines(bf16.encode_image(photo_paths), fp32.encode_image(photo_paths)).min() >= 0.999
        assert cosines(bf16.encode_text(AWKWARD_TEXTS), fp32.encode_text(AWKWARD_TEXTS)).min() >= 0.999


@pytest.mark.slow
def test_bf16_through_the_cli_and_the_server(random_model, encoder_for, tmp_path) -> None:
    from clipserve.cli import main

    name = "ViT-B-32::openai"
    checkpoint = str(random_model(name).checkpoint)
    out = tmp_path / "vectors.npy"
    args = ["encode", "--text", "a photo of a cat", "--backend", "torch", "--precision", "bf16"]
    status = main([*args, "--weights", checkpoint, "--output", str(out)])
    if not HAS_BF16:
        assert status == 2 and not out.exists()
        return
    assert status == 0
    reference = encoder_for(name, "torch").encode_text(["a photo of a cat"])
    assert cosines(np.load(out), reference)[0] >= 0.999
    with running_server(model=name, weights=checkpoint, backend="torch", precision="bf16") as (url, _):
        assert httpx.get(f"{url}/readyz").json()["precision"] == "bf16"
        answer = httpx.post(f"{url}/encode", json={"inputs": [{"text": "a photo of a cat"}]})
        assert cosines(np.asarray(answer.json()["embeddings"]), reference)[0] >= 0.999
        assert metric(url, "clipserve_model_info", model=name, precision="bf16", backend="torch") == 1


def test_bf16_is_refused_where_it_would_be_slow_or_cannot_run(random_model, monkeypatch) -> None:
    from clipserve.encoder import Encoder

    checkpoint = random_model("ViT-B-32::openai").checkpoint
    with pytest.raises(UnsupportedModel, match="bf16 runs on the torch backend"):
        Encoder("ViT-B-32::openai", backend="onnx", precision="bf16", weights=checkpoint)
    zen3 = {"avx2", "fma"}  # AVX2-only: no AVX512_BF16, no AMX
    monkeypatch.setattr("clipserve.backends.torch.cpu_flags", lambda: zen3)
    with pytest.raises(
        UnsupportedModel, match=r"has neither, so bf16 would be emulated.*use int8 \(the onnx"
    ):
        Encoder("ViT-B-32::openai", backend="torch", precision="bf16", weights=checkpoint)
    monkeypatch.setattr("clipserve.backends.base.cpu_flags", lambda: zen3)
    with pytest.raises(UnsupportedModel, match=r"AVX512_BF16 or AMX; this CPU has neither: use int8"):
        Encoder("ViT-B-32::openai", backend="onnx", precision="bf16", weights=checkpoint)
