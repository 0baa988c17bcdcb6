"""What clipserve's Jina executors do, whatever the docarray generation: traverse, read each doc's
content, embed it on the shared pipeline, write vectors and ranking scores back.

A docarray generation (``v1``: ``Document``/``DocumentArray``; ``v2``: ``BaseDoc``/``DocList``)
differs only in how scores and matches are written and what an empty field looks like; its shell
passes a :class:`DocWriter` for that. Everything else lives here, once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.encoder import Encoder
from clipserve.errors import ClipserveError, InvalidInput, echo
from clipserve.inputs import AUDIO_RATE, Item, data_uri_modality, sniff_file, to_item, uri_kind

PATH_PATTERN = re.compile(r"^(r|[cm]+)$")


class DocWriter:
    """How one docarray generation writes results; the shells subclass it."""

    def set_embedding(self, doc: Any, vector: np.ndarray | None) -> None:
        doc.embedding = vector

    def set_scores(self, doc: Any, clip_score: float, cosine: float) -> None:
        raise NotImplementedError

    def set_matches(self, doc: Any, matches: list[Any]) -> None:
        raise NotImplementedError

    def drop_content(self, doc: Any) -> None:
        doc.blob = None
        doc.tensor = None


@dataclass(frozen=True)
class Job:
    """One doc to embed and the item made of its content."""

    doc: Any
    item: Item


def parse_paths(paths: str | Sequence[str]) -> list[str]:
    """Traversal paths as Jina writes them (``'@r'``, ``'@r,c'``, ``'c,m'``, ``['r', 'c']``) →
    ``['r', 'c']``: ``r`` is the docs given; each letter of a path steps into chunks (``c``) or
    matches (``m``), so ``cc`` reaches the chunks of chunks."""
    if isinstance(paths, str):
        parts = paths.removeprefix("@").split(",")
    else:
        parts = [str(p).removeprefix("@") for p in paths]
    parts = [p.strip() for p in parts]
    for part in parts:
        if not PATH_PATTERN.match(part):
            raise InvalidInput(
                f"unsupported traversal path {echo(part)!r} in {echo(paths)!r}: use r, c, m and their "
                "sequences (cc, cm), comma-separated, optionally after @ (e.g. '@r,c')"
            )
    return parts


def traverse(docs: Iterable[Any], paths: list[str]) -> list[Any]:
    """The docs that ``paths`` reach, path after path, in document order."""
    reached: list[Any] = []
    for path in paths:
        level = list(docs)
        if path != "r":
            for step in path:
                level = [child for doc in level for child in children(doc, step)]
        reached.extend(level)
    return reached


def children(doc: Any, step: str) -> list[Any]:
    """A doc's chunks (``c``) or matches (``m``); none when the field is empty or unset."""
    return list(getattr(doc, "chunks" if step == "c" else "matches", None) or [])


class ExecutorCore:
    """The behaviour behind every executor of :mod:`clipserve.jina`.

    ``accepts``: the modalities this executor embeds; docs holding another one are left alone (an
    image encoder passes text docs through). ``preprocessed``: image tensors are model-ready
    ``[3, H, W]`` float pixels (the Hub executors' ``use_default_preprocessing=False``).
    ``local_roots``: the directories whose files a doc's ``uri`` may name (none: no local file is
    read; docs come from the network).
    """

    def __init__(
        self,
        encoder: Encoder,
        writer: DocWriter,
        accepts: Sequence[str],
        access_paths: str | Sequence[str] = "@r",
        batch_size: int = 32,
        preprocessed: bool = False,
        local_roots: Sequence[str | Path] = (),
    ) -> None:
        self.encoder = encoder
        self.writer = writer
        self.accepts = tuple(m for m in accepts if m in encoder.modalities)
        self.access_paths = parse_paths(access_paths)
        self.batch_size = _positive(batch_size, "batch_size")
        self.preprocessed = preprocessed
        self.local_roots = tuple(Path(os.path.realpath(Path(root).expanduser())) for root in local_roots)

    # -- endpoints ---------------------------------------------------------------------------------

    def encode(self, docs: Iterable[Any], parameters: Mapping[str, Any] | None = None) -> None:
        """Embed the content of the docs the traversal reaches; docs without content are skipped.

        Raises:
            InvalidInput: naming the first doc whose content cannot be embedded; no doc is changed.
        """
        parameters = parameters or {}
        jobs = self._jobs(traverse(docs, self._paths(parameters)))
        vectors = self._embed(jobs, self._batch_size(parameters))
        drop = bool(parameters.get("drop_image_content", False))
        for job, vector in zip(jobs, vectors, strict=True):
            self.writer.set_embedding(job.doc, vector)
            if drop and job.item.modality != "text":
                self.writer.drop_content(job.doc)

    def rank(self, docs: Iterable[Any], parameters: Mapping[str, Any] | None = None) -> None:
        """Score each reached doc's matches (or, without matches, its chunks) against it, as
        clip-as-service does: ``scores['clip_score']`` is the softmax of ``logit_scale × cosine``
        over the candidates, ``scores['clip_score_cosine']`` the cosine; the candidates become the
        doc's matches, best first, without embeddings.

        Raises:
            InvalidInput: naming the first doc (query or candidate) that cannot be embedded.
        """
        parameters = parameters or {}
        queries = [doc for doc in traverse(docs, self._paths(parameters)) if self._content(doc)]
        groups: list[tuple[Job, list[Job]]] = []
        jobs: list[Job] = []
        for query in queries:
            query_job = self._job(query, len(jobs), required=True, accepts=self.encoder.modalities)
            jobs.append(query_job)
            candidates = children(query, "m") or children(query, "c")
            candidate_jobs = [
                self._job(c, len(jobs) + i, required=True, accepts=self.encoder.modalities)
                for i, c in enumerate(candidates)
            ]
            jobs.extend(candidate_jobs)
            groups.append((query_job, candidate_jobs))
        vectors = self._embed(jobs, self._batch_size(parameters))
        drop = bool(parameters.get("drop_image_content", False))
        for query_job, candidate_jobs in groups:
            query_vector = vectors[query_job.item.index]
            self.writer.set_embedding(query_job.doc, query_vector)
            if drop and query_job.item.modality != "text":
                self.writer.drop_content(query_job.doc)
            if not candidate_jobs:
                continue
            candidate_vectors = vectors[[job.item.index for job in candidate_jobs]]
            modalities = [job.item.modality for job in candidate_jobs]
            order, scores, cosines = self.encoder.rank_vectors(
                query_vector, query_job.item.modality, candidate_vectors, modalities
            )
            for job, score, cosine in zip(candidate_jobs, scores, cosines, strict=True):
                self.writer.set_scores(job.doc, float(score), float(cosine))
                self.writer.set_embedding(job.doc, None)
                if drop and job.item.modality != "text":
                    self.writer.drop_content(job.doc)
            self.writer.set_matches(query_job.doc, [candidate_jobs[i].doc for i in order])

    # -- internals ---------------------------------------------------------------------------------

    def _paths(self, parameters: Mapping[str, Any]) -> list[str]:
        given = parameters.get("access_paths") or parameters.get("traversal_paths")
        return parse_paths(given) if given else self.access_paths

    def _batch_size(self, parameters: Mapping[str, Any]) -> int:
        given = parameters.get("batch_size") or parameters.get("minibatch_size")
        return _positive(given, "batch_size") if given else self.batch_size

    def _jobs(self, docs: list[Any]) -> list[Job]:
        jobs: list[Job] = []
        for doc in docs:
            job = self._job(doc, len(jobs), required=False, accepts=self.accepts)
            if job is not None:
                jobs.append(job)
        return jobs

    def _job(self, doc: Any, index: int, required: bool, accepts: Sequence[str]) -> Job | None:
        """The doc's content as a pipeline item; None when it holds none, or a modality not in
        ``accepts`` that the executor passes over (unless ``required``: then that is an error
        naming the doc). A modality the model lacks is always an error."""
        try:
            item = self._item(doc, index, accepts)
            if item is None:
                if required:
                    raise InvalidInput("has no text, blob, tensor or uri to embed")
                return None
            if item.modality not in accepts:
                if required or item.modality not in self.encoder.modalities:
                    raise InvalidInput(
                        f"holds {item.modality}, which this executor does not embed "
                        f"(it embeds {', '.join(accepts)})"
                    )
                return None
        except InvalidInput as exc:
            raise _naming(doc, exc) from None
        return Job(doc, item)

    def _item(self, doc: Any, index: int, accepts: Sequence[str]) -> Item | None:
        text, blob, tensor, uri = self._content(doc) or (None, None, None, None)
        if text:
            return Item(index, "text", "text", text)
        if blob:
            return to_item(index, bytes(blob))
        if tensor is not None:
            return self._tensor_item(index, doc, np.asarray(tensor))
        if uri:
            return self._uri_item(index, str(uri), accepts)
        return None

    def _uri_item(self, index: int, uri: str, accepts: Sequence[str]) -> Item | None:
        """A data URI, a URL (when allowed) or a local file under :attr:`local_roots`. Every other
        local path gets one refusal, whether or not it exists: a document's sender learns nothing
        of this machine's files. An executor of text only reads no uri (the doc passes over)."""
        kind = uri_kind(uri)
        if kind == "data_uri":
            return Item(index, data_uri_modality(uri, index), "data_uri", uri)
        if not {"image", "audio"} & set(accepts):
            return None
        if kind == "url":
            if not self.encoder.settings.allow_url:
                raise InvalidInput(
                    f"uri {echo(uri)!r} is a URL, and URLs are off: set CLIPSERVE_ALLOW_URL=1 to fetch them"
                )
            media = [m for m in self.accepts if m != "text"]
            return Item(index, media[0] if len(media) == 1 else "image", "url", uri)
        path = Path(os.path.realpath(uri.removeprefix("file://")))
        if not any(path.is_relative_to(root) for root in self.local_roots):
            where = ", ".join(map(str, self.local_roots)) or "none are set"
            raise InvalidInput(
                f"uri {echo(uri)!r} names a local file; this executor reads local files only under "
                f"local_file_roots ({where})"
            )
        return Item(index, sniff_file(path), "path", path)

    def _tensor_item(self, index: int, doc: Any, tensor: np.ndarray) -> Item:
        if "audio" in self.accepts and _is_waveform(tensor):
            samples = tensor.T if tensor.ndim == 2 else tensor  # Jina's (channels, n) → (n, channels)
            rate = int(float(_tags(doc).get("sample_rate", AUDIO_RATE)))
            return Item(index, "audio", "waveform", (samples, rate))
        if self.preprocessed:
            if tensor.ndim != 3 or tensor.shape[0] != 3 or not np.issubdtype(tensor.dtype, np.floating):
                raise InvalidInput(
                    "use_default_preprocessing=False expects model-ready float [3, H, W] pixels, got "
                    f"{tensor.dtype} {list(tensor.shape)}"
                )
            return Item(index, "image", "pixels", tensor)
        return to_item(index, tensor)

    @staticmethod
    def _content(doc: Any) -> tuple[Any, Any, Any, Any] | None:
        fields = tuple(getattr(doc, name, None) for name in ("text", "blob", "tensor", "uri"))
        text, blob, tensor, uri = fields
        return fields if (text or blob or tensor is not None or uri) else None

    def _embed(self, jobs: list[Job], batch_size: int) -> np.ndarray:
        vectors = np.zeros((len(jobs), self.encoder.dim), dtype=np.float32)
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            rows, errors = self.encoder.pipeline.encode([job.item for job in batch], stop_on_error=True)
            if errors:
                error = errors[0]
                raise _naming(jobs[error.index].doc, error) if error.index is not None else error
            vectors[start : start + len(batch)] = rows
        return vectors


def _naming(doc: Any, error: ClipserveError) -> InvalidInput:
    reason = getattr(error, "reason", None) or str(error)
    return InvalidInput(f"doc {echo(getattr(doc, 'id', None))}: {reason}")


def _tags(doc: Any) -> Mapping[str, Any]:
    return getattr(doc, "tags", None) or {}


def _is_waveform(tensor: np.ndarray) -> bool:
    """Audio samples as Jina's AudioCLIP executors took them: ``(n,)`` or ``(channels, n)``."""
    if not (np.issubdtype(tensor.dtype, np.floating) or tensor.dtype == np.int16):
        return False
    return tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[0] <= 2 < tensor.shape[1])


def _positive(value: Any, name: str) -> int:
    number = int(float(value))
    if number < 1:
        raise InvalidInput(f"{name} must be at least 1, got {echo(value)}")
    return number
