"""The tensor preprocessing path (``tensor_preprocess``: the GPU image path, run here on the CPU with
the same code): close to open_clip's exact vectors, antialiased, and routing what it does not take
to the exact path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipserve.errors import DeviceUnavailable, InvalidInput, UnsupportedModel
from clipserve.inputs import Item
from clipserve.preprocess.image import ImageLimits, ImagePreprocessor, decode_image
from clipserve.preprocess.tensor_image import TensorImagePreprocessor, takes
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


def test_the_tensor_path_needs_the_torch_backend_and_a_jpeg_decoder(random_model, monkeypatch) -> None:
    from clipserve.encoder import Encoder

    checkpoint = random_model(NAME).checkpoint
    with pytest.raises(UnsupportedModel, match="torch backend"):
        Encoder(NAME, backend="onnx", weights=checkpoint, tensor_preprocess=True)

    def no_decoder(*args, **kwargs):
        raise RuntimeError("nvjpeg is not available")

    monkeypatch.setattr("clipserve.preprocess.tensor_image.decode_jpeg", no_decoder)
    with pytest.raises(DeviceUnavailable, match=r"cannot decode JPEGs on cpu.*nvjpeg is not available"):
        Encoder(NAME, backend="torch", weights=checkpoint, tensor_preprocess=True)
