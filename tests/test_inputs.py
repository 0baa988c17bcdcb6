import base64

import numpy as np
import pytest
from PIL import Image

from clipserve.errors import InvalidInput
from clipserve.inputs import decode_data_uri, to_item, to_items


def test_modality_rules(photo_paths, tmp_path) -> None:
    png = photo_paths[0].read_bytes()
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    items = to_items(
        [
            "a photo of a cat",
            str(photo_paths[0]),
            photo_paths[0],
            data_uri,
            png,
            Image.open(photo_paths[0]),
            np.zeros((4, 4, 3), np.uint8),
            np.zeros((3, 224, 224), np.float32),
            "https://example.com/cat.jpg",
            str(tmp_path / "missing.png"),
            "",
        ]
    )
    kinds = [(i.modality, i.kind) for i in items]
    assert kinds == [
        ("text", "text"),
        ("image", "path"),
        ("image", "path"),
        ("image", "bytes"),
        ("image", "bytes"),
        ("image", "pil"),
        ("image", "array"),
        ("image", "pixels"),
        ("text", "text"),  # URLs are text unless allowed
        ("text", "text"),  # a path that names no file is text
        ("text", "text"),
    ]
    assert [i.index for i in items] == list(range(len(items)))
    assert items[3].value == png


def test_urls_are_images_only_when_allowed() -> None:
    assert to_item(0, "https://example.com/cat.jpg", allow_url=True).kind == "url"
    assert to_item(0, "http://example.com/cat.jpg", allow_url=False).kind == "text"


def test_percent_encoded_data_uri() -> None:
    assert decode_data_uri("data:image/svg+xml,%3Csvg%3E") == b"<svg>"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("data:image/png;base64,@@@not-base64@@@", "invalid base64"),
        ("data:text/plain;base64,aGVsbG8=", "not an image"),
        ("data:image/png;base64", "malformed data URI"),
        (np.zeros((3, 4), np.int32), "arrays must be"),
        (12345, "unsupported input type int"),
        ({"text": "dicts are not inputs"}, "unsupported input type dict"),
    ],
)
def test_bad_inputs_name_their_index(value, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        to_items(["fine", value])
    assert info.value.index == 1
    assert str(info.value).startswith("item 1: ")
