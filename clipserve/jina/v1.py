"""The executors on docarray v1 (``Document``/``DocumentArray``, docarray < 0.30)."""

import asyncio
from typing import Any

from docarray import DocumentArray
from jina import Executor, requests

from clipserve.jina import executors
from clipserve.jina.core import DocWriter


class V1Writer(DocWriter):
    """docarray v1: named scores with an ``op_name``; empty fields are ``''``/``b''``/None."""

    def set_scores(self, doc: Any, clip_score: float, cosine: float) -> None:
        doc.scores["clip_score"].value = clip_score
        doc.scores["clip_score"].op_name = "softmax"
        doc.scores["clip_score_cosine"].value = cosine
        doc.scores["clip_score_cosine"].op_name = "cosine"

    def set_matches(self, doc: Any, matches: list[Any]) -> None:
        doc.matches = DocumentArray(matches)

    def drop_content(self, doc: Any) -> None:
        doc.pop("blob", "tensor")


class _Endpoints(Executor):
    """``/rank`` scores matches; every other endpoint (``/encode``, ``/``) embeds."""

    writer = V1Writer()

    @requests
    async def encode(
        self, docs: DocumentArray, parameters: dict | None = None, **kwargs: Any
    ) -> DocumentArray:
        """Embed the docs (see :meth:`clipserve.jina.core.ExecutorCore.encode`)."""
        await asyncio.to_thread(self.core.encode, docs, parameters)
        return docs

    @requests(on="/rank")
    async def rank(self, docs: DocumentArray, parameters: dict | None = None, **kwargs: Any) -> DocumentArray:
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
