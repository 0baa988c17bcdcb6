"""Bad items give typed errors naming the item; the encoder keeps working afterwards."""

import io

import numpy as np
import pytest

from clipserve.errors import DeviceUnavailable, InvalidInput, UnknownModel, UnsupportedModel
from tests.conftest import cosines

NAME = "ViT-B-32::openai"


def _corrupt(photo_paths) -> bytes:
    data = bytearray(photo_paths[0].read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    return bytes(data)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_one_bad_item_raises_with_its_index_and_encoder_survives(backend, photo_paths, encoder_for) -> None:
    encoder = encoder_for(NAME, backend)
    good = encoder.encode(["a cat", photo_paths[1]])
    for bad, message in [
        (_corrupt(photo_paths), "corrupt or truncated"),
        (b"plain bytes, not an image", "not an image"),
        (np.zeros((10, 10), np.uint8), "uint8"),
        (np.zeros((3, 100, 100), np.float32), r"shape \[3, 224, 224\]"),
        (np.full((3, 224, 224), np.nan, np.float32), "NaN"),
    ]:
        with pytest.raises(InvalidInput, match=message) as info:
            encoder.encode(["a cat", photo_paths[1], photo_paths[2], bad])
        assert info.value.index == 3
    assert cosines(encoder.encode(["a cat", photo_paths[1]]), good).min() > 0.99999


def test_text_limits(encoder_for) -> None:
    encoder = encoder_for(NAME, "onnx")
    assert encoder.encode_text([""]).shape == (1, 512)
    with pytest.raises(InvalidInput, match=r"item 1: text of 16385 characters exceeds the limit of 16384"):
        encoder.encode_text(["ok", "x" * 16385])
    with pytest.raises(InvalidInput, match="text must be a string"):
        encoder.encode_text(["ok", b"bytes"])


def test_single_input_must_be_wrapped(encoder_for) -> None:
    encoder = encoder_for(NAME, "onnx")
    with pytest.raises(InvalidInput, match="wrap it in a list"):
        encoder.encode("a cat")
    with pytest.raises(InvalidInput, match=r"\[N, 3, H, W\]"):
        encoder.encode(np.zeros((3, 224, 224), np.float32))
    with pytest.raises(InvalidInput, match="not an image"):
        encoder.encode_image(["just text"])
    with pytest.raises(InvalidInput, match="at least one candidate"):
        encoder.rank("a cat", [])


def test_lenient_encoding_skips_and_reports(photo_paths, encoder_for) -> None:
    encoder = encoder_for(NAME, "onnx")
    inputs = [photo_paths[0], _corrupt(photo_paths), "a cat", 42, photo_paths[1]]
    result = encoder.encode_lenient(inputs)
    assert result.indices == [0, 2, 4]
    assert [e.index for e in result.errors] == [1, 3]
    strict = encoder.encode([inputs[i] for i in result.indices])
    assert cosines(result.vectors, strict).min() > 0.99999


def test_unknown_model_and_bad_options(random_model, cache_root, monkeypatch) -> None:
    from clipserve.encoder import Encoder

    checkpoint = random_model(NAME).checkpoint
    with pytest.raises(UnknownModel, match="ViT-Q-99"):
        Encoder("ViT-Q-99::nothing")
    with pytest.raises(UnsupportedModel, match="unknown backend 'tensorflow'"):
        Encoder(NAME, backend="tensorflow", weights=checkpoint, cache_dir=cache_root)
    with pytest.raises(
        UnsupportedModel, match="precision 'fp16' is not available for the torch backend on 'cpu'"
    ):
        Encoder(NAME, backend="torch", precision="fp16", weights=checkpoint, cache_dir=cache_root)
    with pytest.raises(
        UnsupportedModel, match="precision 'bf16' is not available for the torch backend on 'cuda'"
    ):
        Encoder(
            NAME, backend="torch", precision="bf16", device="cuda", weights=checkpoint, cache_dir=cache_root
        )
    with pytest.raises(UnsupportedModel, match="the onnx backend has no 'bf16' precision"):
        Encoder(NAME, backend="onnx", precision="bf16", weights=checkpoint, cache_dir=cache_root)

    def no_deriving(*args, **kwargs):
        raise AssertionError("converted before the precision was checked for the device")

    monkeypatch.setattr("clipserve.backends.precision.derive", no_deriving)
    with pytest.raises(
        UnsupportedModel,
        match=r"'fp16' is not available for the onnx backend on 'cpu' \(it runs on: cuda, tensorrt\)",
    ):
        Encoder(NAME, backend="onnx", precision="fp16", weights=checkpoint, cache_dir=cache_root)


def test_missing_devices_are_errors_not_cpu_fallbacks(random_model, cache_root) -> None:
    from clipserve.encoder import Encoder

    checkpoint = random_model(NAME).checkpoint
    with pytest.raises(DeviceUnavailable, match="CUDA"):
        Encoder(NAME, backend="torch", device="cuda", weights=checkpoint, cache_dir=cache_root)
    with pytest.raises(DeviceUnavailable, match="CUDAExecutionProvider"):
        Encoder(NAME, backend="onnx", device="cuda", weights=checkpoint, cache_dir=cache_root)
    with pytest.raises(DeviceUnavailable, match="TensorrtExecutionProvider"):
        Encoder(NAME, backend="onnx", device="tensorrt", weights=checkpoint, cache_dir=cache_root)
    with pytest.raises(DeviceUnavailable, match="not 'tpu'"):
        Encoder(NAME, backend="onnx", device="tpu", weights=checkpoint, cache_dir=cache_root)


def test_url_inputs_when_allowed(photo_paths, random_model, cache_root, loopback_files, new_encoder) -> None:
    base, files = loopback_files
    files["/cat.png"] = photo_paths[1].read_bytes()
    encoder = new_encoder(
        NAME,
        weights=random_model(NAME).checkpoint,
        cache_dir=cache_root,
        allow_url=True,
        allow_private_urls=True,
    )
    from_url = encoder.encode([f"{base}/cat.png"])
    assert cosines(from_url, encoder.encode([photo_paths[1]]))[0] > 0.99999
    with pytest.raises(InvalidInput, match=r"item 1: cannot fetch .*404"):
        encoder.encode([f"{base}/cat.png", f"{base}/missing.png"])


def test_pil_images_from_memory(photo_paths, encoder_for) -> None:
    from PIL import Image

    encoder = encoder_for(NAME, "onnx")
    image = Image.open(io.BytesIO(photo_paths[2].read_bytes()))
    assert cosines(encoder.encode([image]), encoder.encode([photo_paths[2]]))[0] > 0.99999


def test_the_lowest_indexed_bad_item_is_reported_whatever_its_modality(photo_paths, encoder_for) -> None:
    encoder = encoder_for(NAME, "onnx")
    inputs = ["fine", _corrupt(photo_paths), "x" * 20_000, photo_paths[0]]
    with pytest.raises(InvalidInput) as info:
        encoder.encode(inputs)
    assert info.value.index == 1  # the image before the too-long text
    with pytest.raises(InvalidInput) as info:
        encoder.encode([photo_paths[0], "x" * 20_000, _corrupt(photo_paths)])
    assert info.value.index == 1
    assert [e.index for e in encoder.encode_lenient(inputs).errors] == [1, 2]
