"""The executors on docarray v2 (``BaseDoc``/``DocList``, docarray ≥ 0.30), with their doc types.

No ``from __future__ import annotations`` here: Jina rebuilds the doc types from their live
annotations to publish the endpoints' schemas, and string annotations break that. The doc types
are two levels deep (:class:`ClipDoc` holds :class:`ClipLeaf` chunks and matches) for the same reason,
and a doc's chunks and matches are empty lists rather than ``None``: the gateway of a Flow of several
executors cannot rebuild the schema of an optional list of docs (pydantic ``KeyError '#/$defs/…'``).
"""

import asyncio
from typing import Any, Dict, Optional  # noqa: UP035 (docarray reads these annotations)

import numpy as np
from docarray import BaseDoc, DocList
from docarray.typing import AnyEmbedding, AnyTensor, NdArray
from jina import Executor, requests
from pydantic import Field

from clipserve.jina import executors
from clipserve.jina.core import DocWriter


class ClipLeaf(BaseDoc):
    """Any content clipserve embeds: ``text``; or an image or audio clip as ``blob`` (file bytes),
    ``tensor`` (uint8 ``[H, W, 3]`` image, float ``[3, H, W]`` pixels, audio ``(n,)`` or
    ``(channels, n)``) or ``uri`` (path, data URI, URL); ``tags['sample_rate']`` for audio."""

    text: Optional[str] = None  # noqa: UP045
    blob: Optional[bytes] = None  # noqa: UP045
    tensor: Optional[AnyTensor] = None  # noqa: UP045
    uri: Optional[str] = None  # noqa: UP045
    tags: Dict[str, Any] = dict()  # noqa: UP006, RUF012
    embedding: Optional[AnyEmbedding] = None  # noqa: UP045
    scores: Optional[Dict[str, float]] = None  # noqa: UP006, UP045


class ClipDoc(ClipLeaf):
    """A doc with chunks (e.g. the images and texts of one page) and matches (candidates of ``/rank``)."""

    chunks: DocList[ClipLeaf] = Field(default_factory=lambda: DocList[ClipLeaf]())
    matches: DocList[ClipLeaf] = Field(default_factory=lambda: DocList[ClipLeaf]())


class TextDoc(BaseDoc):
    """A text to embed."""

    text: Optional[str] = None  # noqa: UP045
    embedding: Optional[AnyEmbedding] = None  # noqa: UP045


class ImageDoc(BaseDoc):
    """An image to embed: file bytes, an array or a uri."""

    blob: Optional[bytes] = None  # noqa: UP045
    tensor: Optional[AnyTensor] = None  # noqa: UP045
    uri: Optional[str] = None  # noqa: UP045
    embedding: Optional[AnyEmbedding] = None  # noqa: UP045


class AudioDoc(ImageDoc):
    """An audio clip to embed: file bytes, samples (with ``tags['sample_rate']``) or a uri."""

    tags: Dict[str, Any] = dict()  # noqa: UP006, RUF012


class V2Writer(DocWriter):
    """docarray v2: scores are a plain dict; chunks and matches are ``DocList[ClipLeaf]``."""

    def set_embedding(self, doc: Any, vector: Optional[np.ndarray]) -> None:  # noqa: UP045
        doc.embedding = None if vector is None else NdArray._docarray_from_native(vector)

    def set_scores(self, doc: Any, clip_score: float, cosine: float) -> None:
        doc.scores = {**(doc.scores or {}), "clip_score": clip_score, "clip_score_cosine": cosine}

    def set_matches(self, doc: Any, matches: list) -> None:
        doc.matches = DocList[ClipLeaf](matches)


class _Endpoints(Executor):
    """``/rank`` scores matches; every other endpoint (``/encode``, ``/``) embeds."""

    writer = V2Writer()

    @requests
    async def encode(self, docs: DocList[ClipDoc], parameters: Dict = {}, **kwargs) -> DocList[ClipDoc]:  # noqa: B006, UP006
        """Embed the docs (see :meth:`clipserve.jina.core.ExecutorCore.encode`)."""
        await asyncio.to_thread(self.core.encode, docs, parameters)
        return docs

    @requests(on="/rank")
    async def rank(self, docs: DocList[ClipDoc], parameters: Dict = {}, **kwargs) -> DocList[ClipDoc]:  # noqa: B006, UP006
        """Rank each doc's matches (see :meth:`clipserve.jina.core.ExecutorCore.rank`)."""
        await asyncio.to_thread(self.core.rank, docs, parameters)
        return docs


(
    CLIPImageEncoder,
    CLIPTextEncoder,
    CLIPEncoder,
    CLIPOnnxEncoder,
    AudioCLIPEncoder,
    AudioCLIPImageEncoder,
    AudioCLIPTextEncoder,
) = executors.executor_classes(_Endpoints, __name__)
