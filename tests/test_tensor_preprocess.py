"""The tensor preprocessing path (``tensor_preprocess``: the GPU image path, run here on the CPU with
the same code): close to open_clip's exact vectors, antialiased, and routing what it does not take
to the exact path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipserve.errors import DeviceUnavailable, InvalidInput
from clipserve.inputs import Item
from clipserve.preprocess.image import ImageLimits, ImagePreprocessor, decode_image
from clipserve.preprocess.tensor_image import EncodedJpeg, TensorImagePreprocessor, takes
from clipserve.zoo import get_spec
from tests.conftest import cosines

NAME = "ViT-B-32::openai"


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def jpegs(photo_paths) -> list[bytes]:
    """Every shared photo as a baseline colour JPEG (the tensor path's input)."""
    return [encoded(Image.open(path).convert("RGB"), quality=95) for path in photo_paths]


@pytest.fixture(scope="module")
def tensor_encoder(random_model):
    from clipserve.encoder import Encoder

    checkpoint = random_model(NAME).checkpoint
    with Encoder(NAME, backend="torch", weights=checkpoint, tensor_preprocess=True) as encoder:
        yield encoder


def test_vectors_match_open_clip_on_the_shared_photos(tensor_encoder, random_model, jpegs) -> None:
    items = [Item(i, "image", "bytes", data) for i, data in enumerate(jpegs)]
    assert all(isinstance(tensor_encoder.pipeline.prepare(item), torch.Tensor) for item in items)
    reference = random_model(NAME).image_vectors([Image.open(io.BytesIO(data)) for data in jpegs])
    assert cosines(tensor_encoder.encode_image(jpegs), reference).min() >= 0.9999


def test_resizing_is_antialiased(photo_paths) -> None:
    """A 1/8 downscale of fine detail: the tensor path stays within about a level of Pillow's
    pixels, where resizing without antialiasing (clip-as-service's issue #904) is far off."""
    spec = get_spec(NAME)
    rng = np.random.default_rng(0)
    detail = rng.integers(0, 256, (1792, 2400, 3), dtype=np.uint8)  # noise: aliasing shows at once
    data = encoded(Image.fromarray(detail), quality=95)
    tensors = TensorImagePreprocessor(
        spec.image_size, spec.resize_mode, spec.interpolation, spec.mean, spec.std, "cpu"
    )
    ours = tensors.decode(data, 0).numpy().astype(np.float32)
    exact = ImagePreprocessor(spec).rgb(decode_image(data)).astype(np.float32)
    decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(data)))).permute(2, 0, 1)
    aliased = torch.nn.functional.interpolate(
        decoded[None].float(), size=(224, 300), mode="bicubic", antialias=False
    )[0, :, :, 38:262].clamp(0, 255)
    assert np.abs(ours - exact).mean() < 1.5
    assert np.abs(aliased.numpy() - exact).mean() > 10 * np.abs(ours - exact).mean()


def test_what_the_tensor_path_does_not_take_goes_the_exact_way(tensor_encoder, photo_paths, tmp_path) -> None:
    rgb = Image.open(photo_paths[0]).convert("RGB")
    limits = ImageLimits()
    baseline = encoded(rgb, quality=90)
    path = tmp_path / "photo.jpg"
    path.write_bytes(baseline)
    assert takes(baseline, limits, 0)
    assert isinstance(tensor_encoder.pipeline.prepare(Item(0, "image", "path", path)), torch.Tensor)
    exact_ones = {
        "png": encoded(rgb, "PNG"),
        "grayscale": encoded(rgb.convert("L"), quality=90),
        "cmyk": encoded(rgb.convert("CMYK"), quality=90),
        "progressive": encoded(rgb, quality=90, progressive=True),
        "not an image": b"plain bytes",
    }
    for data in exact_ones.values():
        assert not takes(data, limits, 0)
    assert isinstance(tensor_encoder.pipeline.prepare(Item(0, "image", "pil", rgb)), np.ndarray)

    exact_route = [exact_ones[k] for k in ("png", "grayscale", "cmyk", "progressive")]
    inputs = [baseline, *exact_route, rgb, np.asarray(rgb)]
    prepared = [
        tensor_encoder.pipeline.prepare(Item(i, "image", "bytes", v)) for i, v in enumerate(exact_route)
    ]
    assert all(isinstance(p, np.ndarray) and p.dtype == np.uint8 for p in prepared)
    from clipserve.encoder import Encoder

    with Encoder(NAME, backend="torch", weights=tensor_encoder.settings.weights) as exact:
        mixed = tensor_encoder.encode_image(inputs)
        assert np.allclose(mixed[1:], exact.encode_image(inputs[1:]), atol=1e-5)  # the exact path, exactly
        assert cosines(mixed[:1], exact.encode_image(inputs[:1]))[0] >= 0.9999


def test_limits_and_corrupt_jpegs_are_errors_naming_the_item(tensor_encoder, photo_paths) -> None:
    from clipserve.encoder import Encoder

    big = encoded(Image.open(photo_paths[0]).convert("RGB").resize((3000, 2000)), quality=90)
    with (
        pytest.raises(InvalidInput, match="exceeds the limit") as caught,
        Encoder(
            NAME,
            backend="torch",
            weights=tensor_encoder.settings.weights,
            tensor_preprocess=True,
            max_pixels=1_000_000,
        ) as capped,
    ):
        capped.encode(["a caption", big])
    assert caught.value.index == 1
    truncated = encoded(Image.open(photo_paths[0]).convert("RGB"), quality=90)
    truncated = truncated[: len(truncated) // 2]
    assert takes(truncated, ImageLimits(), 2)  # its header is fine
    with pytest.raises(InvalidInput, match="corrupt or truncated image") as caught:
        tensor_encoder.encode(["a caption", "another", truncated])
    assert caught.value.index == 2


def test_the_onnx_backend_takes_the_tensors_as_they_are(
    tensor_encoder, random_model, jpegs, cache_root
) -> None:
    """IO binding: ONNX Runtime reads the torch tensor's memory; the vectors are the torch
    backend's on the same pixels, and close to open_clip's exact ones."""
    from clipserve.encoder import Encoder

    model = random_model(NAME)
    with Encoder(
        NAME, backend="onnx", weights=model.checkpoint, cache_dir=cache_root, tensor_preprocess=True
    ) as onnx:
        assert isinstance(onnx.pipeline.prepare(Item(0, "image", "bytes", jpegs[0])), torch.Tensor)
        vectors = onnx.encode_image(jpegs)
        backend = onnx.pipeline.model.backend
        pixels = torch.randn(4, 3, 224, 224)
        strided = torch.randn(4, 224, 224, 3).permute(0, 3, 1, 2)  # not contiguous: bound after a copy
        assert np.allclose(
            backend.encode_image_tensor(pixels), backend.encode_image(pixels.numpy()), atol=1e-5
        )
        assert np.allclose(
            backend.encode_image_tensor(strided), backend.encode_image(strided.numpy()), atol=1e-5
        )
    assert cosines(vectors, tensor_encoder.encode_image(jpegs)).min() >= 0.99999
    reference = model.image_vectors([Image.open(io.BytesIO(data)) for data in jpegs])
    assert cosines(vectors, reference).min() >= 0.9999


@pytest.fixture
def batch_decoding(monkeypatch) -> list[int]:
    """JPEGs decoded a batch at a time (the GPU rule) on the CPU; yields the sizes of the lists
    given to the decoder in one call."""
    from clipserve.preprocess import tensor_image

    calls: list[int] = []
    decode = tensor_image.decode_jpeg

    def recording(data, *args, **kwargs):
        if isinstance(data, list):
            calls.append(len(data))
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(tensor_image, "batch_decodes", lambda device: True)
    monkeypatch.setattr(tensor_image, "decode_jpeg", recording)
    return calls


def truncated_jpeg(data: bytes) -> bytes:
    return data[: len(data) // 2]


def test_a_batch_of_jpegs_is_decoded_in_one_call(batch_decoding, tensor_encoder, random_model, jpegs) -> None:
    from clipserve.encoder import Encoder

    checkpoint = random_model(NAME).checkpoint
    inputs = jpegs * 2  # 20 images
    with Encoder(NAME, backend="torch", weights=checkpoint, tensor_preprocess=True, batch_size=8) as batched:
        assert isinstance(batched.pipeline.prepare(Item(0, "image", "bytes", jpegs[0])), EncodedJpeg)
        batch_decoding.clear()
        vectors = batched.encode_image(inputs)
        assert batch_decoding == [8, 8, 4]
        assert np.allclose(vectors, tensor_encoder.encode_image(inputs), atol=1e-5)

        # a corrupt JPEG fails alone: its batch-mates are embedded as without it
        bad = truncated_jpeg(jpegs[3])
        result = batched.encode_lenient([jpegs[0], bad, jpegs[1], "a caption"])
        assert result.indices == [0, 2, 3]
        assert [(e.index, "corrupt or truncated" in str(e)) for e in result.errors] == [(1, True)]
        assert np.allclose(result.vectors[:2], vectors[:2], atol=1e-5)
        with pytest.raises(InvalidInput, match="corrupt or truncated image") as caught:
            batched.encode(["a caption", jpegs[0], bad, truncated_jpeg(jpegs[4])])
        assert caught.value.index == 2


@pytest.mark.parametrize("batched", [False, True])
def test_a_device_out_of_memory_is_not_called_a_corrupt_image(batched, jpegs, monkeypatch) -> None:
    from clipserve.preprocess import tensor_image

    spec = get_spec(NAME)
    tensors = TensorImagePreprocessor(
        spec.image_size, spec.resize_mode, spec.interpolation, spec.mean, spec.std, "cpu", batched
    )

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tensor_image, "decode_jpeg", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        if batched:
            tensors.decode_batch([tensors.prepare(data, i) for i, data in enumerate(jpegs[:3])])
        else:
            tensors.prepare(jpegs[0], 0)


def test_the_server_fails_only_the_request_with_the_corrupt_jpeg(
    batch_decoding, tensor_encoder, random_model, jpegs
) -> None:
    """Two requests share one batched decode: the one holding a corrupt JPEG answers 422 naming
    it, the other gets its vectors."""
    import base64
    import threading

    import httpx

    from tests.server_helpers import running_server

    def body(*images: bytes) -> dict:
        return {"inputs": [{"image": base64.b64encode(image).decode()} for image in images]}

    requests = {"good": body(jpegs[0], jpegs[1]), "bad": body(jpegs[2], truncated_jpeg(jpegs[3]))}
    answers: dict[str, httpx.Response] = {}
    start = threading.Barrier(len(requests))

    def send(name: str) -> None:
        start.wait()
        answers[name] = httpx.post(f"{url}/encode", json=requests[name], timeout=60)

    checkpoint = random_model(NAME).checkpoint
    settings = dict(weights=checkpoint, backend="torch", tensor_preprocess=True, max_wait_ms=1000)
    with running_server(**settings) as (url, _):
        batch_decoding.clear()  # the warm-up's batch
        threads = [threading.Thread(target=send, args=(name,)) for name in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert batch_decoding == [4]  # one decode call for both requests' images
        assert answers["good"].status_code == 200
        good = np.array(answers["good"].json()["embeddings"])
        assert np.allclose(good, tensor_encoder.encode_image(jpegs[:2]), atol=1e-5)
        bad = answers["bad"]
        assert (bad.status_code, bad.json()["error"], bad.json()["index"]) == (422, "InvalidInput", 1)
        assert "corrupt or truncated image" in bad.json()["detail"]
        again = httpx.post(f"{url}/encode", json=body(jpegs[2]), timeout=60)
        assert again.status_code == 200


def test_the_tensor_path_needs_a_jpeg_decoder(random_model, monkeypatch) -> None:
    from clipserve.encoder import Encoder

    checkpoint = random_model(NAME).checkpoint

    def no_decoder(*args, **kwargs):
        raise RuntimeError("nvjpeg is not available")

    monkeypatch.setattr("clipserve.preprocess.tensor_image.decode_jpeg", no_decoder)
    with pytest.raises(DeviceUnavailable, match=r"cannot decode JPEGs on cpu.*nvjpeg is not available"):
        Encoder(NAME, backend="torch", weights=checkpoint, tensor_preprocess=True)
