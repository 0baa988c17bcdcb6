"""Named precisions: int8 (ONNX Runtime, CPU) within cosine 0.99 of fp32, cached; fp16 ONNX graphs
(for GPUs) validated on the CPU; wrong ones refused."""

import json
from pathlib import Path

import pytest

from clipserve.errors import DeviceUnavailable, UnsupportedModel, WeightsUnavailable
from tests.conftest import AWKWARD_TEXTS, cosines


@pytest.fixture(scope="module")
def int8_cache(cache_with_exports) -> Path:
    return cache_with_exports("ViT-B-32::openai", "RN50::openai")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32::openai", "RN50::openai"])
def test_int8_close_to_fp32_on_photos_and_texts(
    name, int8_cache, random_model, photo_paths, new_encoder
) -> None:
    checkpoint = random_model(name).checkpoint
    fp32 = new_encoder(name, weights=checkpoint, cache_dir=int8_cache)
    int8 = new_encoder(name, weights=checkpoint, cache_dir=int8_cache, precision="int8")
    assert int8.info()["precision"] == "int8" and fp32.info()["precision"] == "fp32"
    int8_dir, fp32_dir = int8.info()["weights"], fp32.info()["weights"]
    assert int8_dir != fp32_dir
    assert int8_dir.rsplit("/", 1)[0] == fp32_dir.rsplit("/", 1)[0]  # cached beside the fp32 export
    assert cosines(int8.encode_image(photo_paths), fp32.encode_image(photo_paths)).min() >= 0.99
    assert cosines(int8.encode_text(AWKWARD_TEXTS), fp32.encode_text(AWKWARD_TEXTS)).min() >= 0.99


def test_int8_export_is_cached_and_reused(int8_cache, random_model, monkeypatch, new_encoder) -> None:
    name = "ViT-B-32::openai"
    checkpoint = random_model(name).checkpoint
    first = new_encoder(name, weights=checkpoint, cache_dir=int8_cache, precision="int8")

    def no_quantising(*args, **kwargs):
        raise AssertionError("quantised again instead of reusing the cache")

    monkeypatch.setattr("clipserve.backends.precision.derive_int8", no_quantising)
    monkeypatch.setattr("clipserve.backends.export.export_onnx", no_quantising)
    second = new_encoder(name, weights=checkpoint, cache_dir=int8_cache, precision="int8")
    assert second.info()["weights"] == first.info()["weights"]


@pytest.mark.slow
def test_an_int8_export_quantised_otherwise_is_derived_again(
    int8_cache, random_model, monkeypatch, new_encoder
) -> None:
    """An int8 export that does not record the towers it quantised (made before the audio tower
    stayed fp32) is derived again, once."""
    import json

    from clipserve.encoder import Encoder
    from clipserve.weights import ONNX_MARKER

    name = "ViT-B-32::openai"
    checkpoint = random_model(name).checkpoint
    export = Path(
        new_encoder(name, weights=checkpoint, cache_dir=int8_cache, precision="int8").info()["weights"]
    )
    meta = json.loads((export / ONNX_MARKER).read_text())
    assert meta["quantised"] == ["image.onnx", "text.onnx"]
    del meta["quantised"]
    (export / ONNX_MARKER).write_text(json.dumps(meta))
    derived = []
    from clipserve.backends import precision

    original = precision.derive_int8
    monkeypatch.setattr(precision, "derive_int8", lambda *a: derived.append(a) or original(*a))
    Encoder(name, weights=checkpoint, cache_dir=int8_cache, precision="int8")
    Encoder(name, weights=checkpoint, cache_dir=int8_cache, precision="int8")
    assert len(derived) == 1


def test_export_command_writes_int8_that_loads_without_checkpoint(
    tmp_path, random_model, int8_cache, new_encoder
) -> None:
    from clipserve.cli import main
    from clipserve.encoder import Encoder

    name = "ViT-B-32::openai"
    checkpoint = random_model(name).checkpoint
    out = tmp_path / "int8"
    args = ["export", "--model", name, "--weights", str(checkpoint), "--cache-dir", str(int8_cache)]
    assert main([*args, "--precision", "int8", "--output", str(out)]) == 0
    assert json.loads((out / "clipserve.json").read_text())["precision"] == "int8"
    encoder = new_encoder(name, weights=out, precision="int8")
    reference = new_encoder(name, weights=checkpoint, cache_dir=int8_cache)
    assert cosines(encoder.encode_text(["a cat"]), reference.encode_text(["a cat"]))[0] >= 0.99
    with pytest.raises(UnsupportedModel, match=r"is a int8 export: run it with precision='int8'"):
        Encoder(name, weights=out, precision="fp32")


@pytest.mark.slow
def test_an_fp32_export_dir_yields_int8_in_the_cache(tmp_path, onnx_export, new_encoder) -> None:
    fp32_dir = onnx_export("ViT-B-32::openai")
    encoder = new_encoder("ViT-B-32::openai", weights=fp32_dir, cache_dir=tmp_path, precision="int8")
    assert encoder.info()["weights"].startswith(str(tmp_path / "onnx" / "ViT-B-32" / "sha-"))


def no_deriving(*args, **kwargs):
    raise AssertionError("converted before the device was checked")


def test_wrong_precision_for_backend_or_device(random_model, cache_root, monkeypatch, new_encoder) -> None:
    from clipserve.backends.onnx import OnnxBackend
    from clipserve.encoder import Encoder

    name = "ViT-B-32::openai"
    checkpoint = random_model(name).checkpoint
    with pytest.raises(UnsupportedModel, match="the torch backend has no 'int8' precision"):
        Encoder(name, backend="torch", precision="int8", weights=checkpoint, cache_dir=cache_root)
    with pytest.raises(UnsupportedModel, match="unknown precision 'int4'"):
        Encoder(name, precision="int4", weights=checkpoint, cache_dir=cache_root)
    with pytest.raises(UnsupportedModel, match="'int8' is not available for the onnx backend on 'cuda'"):
        Encoder(name, precision="int8", device="cuda", weights=checkpoint, cache_dir=cache_root)
    monkeypatch.setattr("clipserve.backends.precision.derive", no_deriving)
    with pytest.raises(DeviceUnavailable, match="CUDAExecutionProvider"):
        Encoder(name, precision="fp16", device="cuda", weights=checkpoint, cache_dir=cache_root)
    fp32_dir = new_encoder(name, weights=checkpoint, cache_dir=cache_root).pipeline.model.backend.model_dir
    from clipserve.zoo import get_spec

    with pytest.raises(WeightsUnavailable, match="holds a fp32 export, not int8"):
        OnnxBackend(get_spec(name), fp32_dir, precision="int8")


@pytest.mark.slow
def test_int8_from_an_older_format_export_dir_is_derived_once(
    tmp_path, monkeypatch, onnx_export, new_encoder
) -> None:
    import shutil

    old = tmp_path / "old-export"
    shutil.copytree(onnx_export("ViT-B-32::openai"), old)
    meta = json.loads((old / "clipserve.json").read_text())
    (old / "clipserve.json").write_text(json.dumps({**meta, "export_format": 1}))
    first = new_encoder("ViT-B-32::openai", weights=old, cache_dir=tmp_path / "cache", precision="int8")

    def no_quantising(*args, **kwargs):
        raise AssertionError("quantised again instead of reusing the cache")

    monkeypatch.setattr("clipserve.backends.precision.derive_int8", no_quantising)
    second = new_encoder("ViT-B-32::openai", weights=old, cache_dir=tmp_path / "cache", precision="int8")
    assert second.info()["weights"] == first.info()["weights"]


@pytest.mark.slow
def test_fp16_export_keeps_float32_io_and_stays_close_to_fp32(
    tmp_path, random_model, int8_cache, new_encoder
) -> None:
    """The fp16 graphs (for CUDA and TensorRT) are made on a machine without a GPU, and checked
    here on ONNX Runtime's CPU provider, which computes what lacks float16 kernels in float32: the
    fp16 weights and the graph are validated; float16 arithmetic itself only on a GPU."""
    import numpy as np
    import onnx

    from clipserve.backends.onnx import open_session
    from clipserve.cli import main
    from clipserve.encoder import Encoder
    from clipserve.preprocess.text import ClipTokenizer

    name = "ViT-B-32::openai"
    checkpoint = random_model(name).checkpoint
    out = tmp_path / "fp16"
    args = ["export", "--model", name, "--weights", str(checkpoint), "--cache-dir", str(int8_cache)]
    assert main([*args, "--precision", "fp16", "--output", str(out)]) == 0
    meta = json.loads((out / "clipserve.json").read_text())
    assert (meta["precision"], meta["quantised"]) == ("fp16", ["image.onnx", "text.onnx"])
    fp32 = new_encoder(name, weights=checkpoint, cache_dir=int8_cache)
    tokenizer = ClipTokenizer(77)
    texts = ["a photo of a cat", "ein Hund", "x"]
    tokens = tokenizer.pad(tokenizer.token_ids(texts), None)
    pixels = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    for tower, feed, reference in [
        ("image", {"pixels": pixels}, fp32.pipeline.model.backend.encode_image(pixels)),
        ("text", {"tokens": tokens[:, :8]}, fp32.pipeline.model.backend.encode_text(tokens[:, :8])),
    ]:
        graph = onnx.load(out / f"{tower}.onnx")
        weights = [w for w in graph.graph.initializer if len(w.dims) == 2]
        assert weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
        session = open_session(out / f"{tower}.onnx", ["CPUExecutionProvider"], False, "fp16")
        assert session.get_inputs()[0].type != "tensor(float16)"  # fed as to fp32
        vectors = session.run(None, feed)[0]
        assert vectors.dtype == np.float32
        assert cosines(vectors, reference).min() >= 0.999
    with pytest.raises(UnsupportedModel, match=r"'fp16' is not available for the onnx backend on 'cpu'"):
        Encoder(name, weights=out, precision="fp16")
