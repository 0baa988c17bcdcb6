"""clip-as-service's own client (``clip-client`` 0.8, docarray v1) against a Flow of clipserve's
CLIPEncoder: ``encode`` and ``rank`` work as they did against clip-as-service."""

import numpy as np
import pytest
from clip_client import Client
from docarray import Document, DocumentArray
from jina import Flow
from PIL import Image

from clipserve.jina import CLIPEncoder
from tests.conftest import SHARED_PHOTOS
from tests.jina.conftest import VIT, assert_same
from tests.jina.test_executors import CAPTIONS


@pytest.fixture(scope="module")
def client():
    running = Flow(host="127.0.0.1").add(
        uses=CLIPEncoder, uses_with={"name": "ViT-B-32::openai", "model_path": VIT}, host="127.0.0.1"
    )
    with running:
        yield Client(f"grpc://127.0.0.1:{running.port}")


def test_encode_texts_and_image_paths(client, clip_encoder) -> None:
    path = str(SHARED_PHOTOS / "chelsea.png")  # read into a blob by the client, by its mime type
    vectors = client.encode(["she smiled, with pain", path])
    assert isinstance(vectors, np.ndarray) and vectors.shape == (2, clip_encoder.dim)
    assert_same(vectors, clip_encoder.encode(["she smiled, with pain", path]))


def test_encode_a_document_array(client, clip_encoder) -> None:
    image = np.asarray(Image.open(SHARED_PHOTOS / "coffee.png").convert("RGB"))
    path = SHARED_PHOTOS / "horse.png"
    batch = DocumentArray(
        [
            Document(text="a cup of coffee"),
            Document(uri=str(path)),
            Document(blob=path.read_bytes()),
            Document(tensor=image),
        ]
    )
    result = client.encode(batch)
    assert_same(result, clip_encoder.encode(["a cup of coffee", path, path.read_bytes(), image]))


def test_rank(client, clip_encoder) -> None:
    path = str(SHARED_PHOTOS / "camera.png")
    query = Document(uri=path, matches=[Document(text=c) for c in CAPTIONS])
    ranked = client.rank([query])
    expected = clip_encoder.rank(path, CAPTIONS)
    assert [m.text for m in ranked[0].matches] == [CAPTIONS[r.index] for r in expected]
    scores = [m.scores["clip_score"].value for m in ranked[0].matches]
    assert scores == pytest.approx([r.clip_score for r in expected], abs=1e-4)
    assert [m.scores["clip_score_cosine"].value for m in ranked[0].matches] == pytest.approx(
        [r.cosine for r in expected], abs=1e-4
    )
    assert ranked[0].matches[0].scores["clip_score"].op_name == "softmax"
