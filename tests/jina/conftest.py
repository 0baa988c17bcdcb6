"""Run inside a Jina environment (``.venv-jina``: docarray v2; ``.venv-jina-docarray-v1``: v1) by
``tests/test_jina.py``, which passes the ONNX exports to use in ``CLIPSERVE_JINA_TESTS``.

Docs are built and read through the helpers here, so each test reads the same in both docarray
generations. Jina is kept off the network: no telemetry, no public-IP lookup for its start-up
table, everything bound to 127.0.0.1.
"""

import json
import os

os.environ.setdefault("JINA_OPTOUT_TELEMETRY", "1")
os.environ.setdefault("JINA_DEFAULT_HOST", "127.0.0.1")
os.environ.setdefault("NO_VERSION_CHECK", "1")  # clip-client's import-time PyPI lookup

import jina.orchestrate.orchestrator as orchestrator
import numpy as np
import pytest

from clipserve.jina import DOCARRAY_GENERATION

orchestrator.get_public_ip = lambda *args, **kwargs: None  # Flow start-up asks three public services
orchestrator.get_internal_ip = lambda *args, **kwargs: "127.0.0.1"

MODELS = json.loads(os.environ["CLIPSERVE_JINA_TESTS"])
VIT = MODELS["vit"]
"""A ViT-B-32 ONNX export (random weights)."""
AUDIOCLIP = MODELS["audioclip"]
"""An AudioCLIP ONNX export (the seeded random checkpoint of ``tests/audioclip_weights.py``)."""

if DOCARRAY_GENERATION == 1:
    from docarray import Document, DocumentArray

    def doc(chunks=(), matches=(), **fields):
        """A doc with these fields, chunks and matches."""
        return Document(chunks=list(chunks), matches=list(matches), **fields)

    leaf = doc

    def docs(items) -> DocumentArray:
        return DocumentArray(list(items))

    def score(match, name: str) -> float:
        return match.scores[name].value

    def post(flow, endpoint: str, items, parameters=None):
        return flow.post(endpoint, inputs=items, parameters=parameters or {})

else:
    from docarray import DocList

    from clipserve.jina import ClipDoc, ClipLeaf

    def doc(chunks=(), matches=(), **fields) -> ClipDoc:
        """A doc with these fields, chunks and matches."""
        return ClipDoc(chunks=DocList[ClipLeaf](chunks), matches=DocList[ClipLeaf](matches), **fields)

    def leaf(**fields) -> ClipLeaf:
        return ClipLeaf(**fields)

    def docs(items):
        return DocList[ClipDoc](list(items))

    def score(match, name: str) -> float:
        return match.scores[name]

    def post(flow, endpoint: str, items, parameters=None):
        return flow.post(endpoint, inputs=items, parameters=parameters or {}, return_type=DocList[ClipDoc])


def embedding(item) -> np.ndarray | None:
    """A doc's vector as float32 numpy, or None."""
    return None if item.embedding is None else np.asarray(item.embedding, dtype=np.float32)


def assert_same(got, expected: np.ndarray, minimum: float = 0.9999) -> None:
    """Vectors (docs or rows) equal the library's: cosine ≥ ``minimum`` row by row."""
    rows = np.stack([embedding(g) if not isinstance(g, np.ndarray) else g for g in got])
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    assert rows.shape == expected.shape
    assert (rows * expected).sum(axis=1).min() >= minimum


@pytest.fixture(scope="session")
def clip_encoder():
    """The library's encoder on the same export: the reference."""
    from clipserve.encoder import Encoder

    with Encoder("ViT-B-32::openai", weights=VIT) as encoder:
        yield encoder


@pytest.fixture(scope="session")
def audioclip_encoder():
    from clipserve.encoder import Encoder

    with Encoder("AudioCLIP::full", weights=AUDIOCLIP) as encoder:
        yield encoder
