import base64
import io
import wave

import numpy as np
import pytest
from PIL import Image

from clipserve.errors import InvalidInput
from clipserve.inputs import (
    Item,
    data_uri_modality,
    decode_data_uri,
    openai_item,
    sniff_bytes,
    to_item,
    wire_item,
)


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    return buffer.getvalue()


def to_list(values: list) -> list[Item]:
    return [to_item(i, value) for i, value in enumerate(values)]


def test_modality_rules(photo_paths, tmp_path) -> None:
    png = photo_paths[0].read_bytes()
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    (tmp_path / "clip.bin").write_bytes(_wav())
    items = to_list(
        [
            "a photo of a cat",
            str(photo_paths[0]),
            photo_paths[0],
            data_uri,
            png,
            Image.open(photo_paths[0]),
            np.zeros((4, 4, 3), np.uint8),
            np.zeros((3, 224, 224), np.float32),
            "https://example.com/cats",
            "24/7 and/or w/o",
            "",
            _wav(),
            tmp_path / "clip.bin",  # audio by content, whatever the name says
        ]
    )
    kinds = [(i.modality, i.kind) for i in items]
    assert kinds == [
        ("text", "text"),
        ("image", "path"),
        ("image", "path"),
        ("image", "data_uri"),  # decoded later, on a worker
        ("image", "bytes"),
        ("image", "pil"),
        ("image", "array"),
        ("image", "pixels"),
        ("text", "text"),  # URLs are text unless allowed
        ("text", "text"),  # slashes alone do not make a path
        ("text", "text"),
        ("audio", "bytes"),
        ("audio", "path"),
    ]
    assert [i.index for i in items] == list(range(len(items)))
    assert decode_data_uri(items[3].value) == png


@pytest.mark.parametrize(
    "value",
    ["photos/catt.jpg", "CAT.PNG", "./photos/cat", "~/missing/cat", "/no/such/clip.wav", "{tmp}/missing"],
)
def test_a_mistyped_path_is_refused_not_embedded_as_text(value: str, tmp_path) -> None:
    value = value.format(tmp=tmp_path)
    with pytest.raises(InvalidInput, match="looks like a file path, but no such file exists") as info:
        to_list(["a cat", value])
    assert info.value.index == 1 and value in str(info.value) and "pass it as text" in str(info.value)
    assert to_item(0, "my holiday photos/cat.jpg (a caption)").kind == "text"  # spaces: a caption


def test_an_image_url_is_refused_while_urls_are_off() -> None:
    with pytest.raises(InvalidInput, match="URLs are off: allow_url=True"):
        to_item(3, "https://example.com/cat.jpg")


def test_a_2d_float_array_given_as_an_image_says_what_shapes_are_accepted(new_encoder, onnx_export) -> None:
    encoder = new_encoder(weights=onnx_export("ViT-B-32::openai"))
    with pytest.raises(
        InvalidInput, match=r"not an image: an array of float32 \[4, 4\] reads as audio"
    ) as info:
        encoder.encode_image([np.zeros((4, 4), np.float32)])
    assert "uint8 [H, W, 3]" in str(info.value) and "float [3, H, W]" in str(info.value)


def test_urls_are_images_only_when_allowed() -> None:
    assert to_item(0, "https://example.com/cat.jpg", allow_url=True).kind == "url"
    assert to_item(0, "http://example.com/cats", allow_url=False).kind == "text"


def test_percent_encoded_data_uri() -> None:
    assert decode_data_uri("data:image/svg+xml,%3Csvg%3E") == b"<svg>"


def test_content_sniffing() -> None:
    assert sniff_bytes(b"\xff\xd8\xff\xe0") == "image"  # JPEG
    assert sniff_bytes(b"\x89PNG\r\n") == "image"
    for audio in (_wav(), b"fLaC\0\0", b"OggS\0\2", b"ID3\4\0", b"\xff\xfb\x90\x64", b"\0\0\0\x20ftypM4A "):
        assert sniff_bytes(audio) == "audio", audio[:8]
    assert data_uri_modality("data:audio/wav;base64,AAAA") == "audio"
    assert data_uri_modality("data:;base64,AAAA") == "image"


def test_wire_and_openai_items_stay_undecoded() -> None:
    assert wire_item(0, "image", "aGVsbG8=", allow_url=False).kind == "base64"
    assert wire_item(0, "audio", "data:audio/wav;base64,AA==", allow_url=False).kind == "data_uri"
    with pytest.raises(InvalidInput, match="--allow-url"):
        wire_item(2, "image", "https://example.com/x.png", allow_url=False)
    with pytest.raises(InvalidInput, match="the image field holds a data URI of audio"):
        wire_item(1, "image", "data:audio/wav;base64,AA==", allow_url=False)
    assert openai_item(0, "data:audio/wav;base64,AA==", allow_url=False).modality == "audio"
    assert openai_item(0, "https://example.com/x.png", allow_url=False).modality == "text"
    assert openai_item(0, "https://example.com/x.png", allow_url=True).kind == "url"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("data:text/plain;base64,aGVsbG8=", "neither an image nor audio"),
        ("data:image/png;base64", "malformed data URI"),
        (np.zeros((3, 4), np.int32), "none of the accepted shapes: arrays are images as uint8"),
        (12345, "unsupported input type int"),
        ({"text": "dicts are not inputs"}, "unsupported input type dict"),
    ],
)
def test_bad_inputs_name_their_index(value, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        [to_item(i, v) for i, v in enumerate(["fine", value])]
    assert info.value.index == 1
    assert str(info.value).startswith("item 1: ")


def test_bad_base64_is_found_when_decoded() -> None:
    with pytest.raises(InvalidInput, match="item 4: data URI has invalid base64"):
        decode_data_uri("data:image/png;base64,@@@not-base64@@@", index=4)
