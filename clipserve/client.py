"""HTTP client for a clipserve server, sync (:class:`Client`) and async (:class:`AsyncClient`).

Inputs are taken like :meth:`clipserve.encoder.Encoder.encode`: texts, image paths (``str`` naming
a file, or ``Path``), ``bytes``, data URIs, PIL images and ``[H, W, 3]`` uint8 arrays. Large inputs are
sent in batches (``.npy`` answers), with a progress bar on request; a busy server (503) is retried
with exponential backoff, honouring ``Retry-After``; a batch the server finds too large (413: too
many items, or audio clips heavier than its in-flight limit) is sent again in halves.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm.auto import tqdm

from clipserve.errors import ClipserveError, InvalidInput
from clipserve.inputs import to_item
from clipserve.preprocess.image import decode_image
from clipserve.vectors import RankedMatch

NPY = "application/x-npy"
RETRY_STATUSES = frozenset({502, 503, 504})
DEFAULT_REQUEST_MB = 8.0


class ServerError(ClipserveError):
    """The server answered with an error; ``status``, ``error``, ``detail`` and ``index`` say what."""

    def __init__(self, status: int, error: str, detail: str, index: int | None) -> None:
        self.status, self.error, self.detail, self.index = status, error, detail, index
        super().__init__(f"{status} {error}: {detail}")


def to_payload(value: Any, index: int) -> dict[str, str]:
    """One input as the server's ``{"text": ...}``, ``{"image": ...}`` or ``{"audio": ...}``, its
    modality detected by the same rules as :meth:`clipserve.Encoder.encode` (http(s) strings are
    sent as URLs for the server to fetch, when it allows that)."""
    item = to_item(index, value, allow_url=True)
    if item.kind in ("text", "url", "data_uri"):
        return {item.modality: item.value}
    if item.kind == "path":
        return {item.modality: base64.b64encode(Path(item.value).read_bytes()).decode()}
    if item.kind == "bytes":
        return {item.modality: base64.b64encode(item.value).decode()}
    if item.kind in ("pil", "array"):
        image = item.value if item.kind == "pil" else decode_image(item.value, index)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return {"image": base64.b64encode(buffer.getvalue()).decode()}
    raise InvalidInput(f"{item.kind} inputs cannot be sent to a server; send the image itself", index)


def batched_bodies(
    inputs: Sequence[Any], max_items: int, max_bytes: int
) -> Iterator[tuple[int, dict[str, list[dict[str, str]]]]]:
    """``(start, {"inputs": [...]})`` request bodies of at most ``max_items`` inputs and about
    ``max_bytes`` (one larger input goes alone); inputs are read only as their batch is built."""
    start, size, payloads = 0, 0, []
    for index, value in enumerate(inputs):
        payload = to_payload(value, index)
        cost = sum(len(v) for v in payload.values()) + 16
        if payloads and (len(payloads) >= max_items or size + cost > max_bytes):
            yield start, {"inputs": payloads}
            start, size, payloads = index, 0, []
        payloads.append(payload)
        size += cost
    if payloads:
        yield start, {"inputs": payloads}


def halves(start: int, body: dict) -> list[tuple[int, dict]]:
    """A request body of several inputs cut in two, each with its start (an answer of 413)."""
    inputs = body["inputs"]
    middle = len(inputs) // 2
    first, second = inputs[:middle], inputs[middle:]
    return [(start, {**body, "inputs": first}), (start + middle, {**body, "inputs": second})]


def splits(error: ServerError, body: dict) -> bool:
    """Whether a batch that failed with ``error`` is worth sending again in halves."""
    return error.status == 413 and len(body["inputs"]) > 1


def _raise_for(response: httpx.Response, offset: int = 0) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"error": "HTTPError", "detail": response.text[:500], "index": None}
    index = body.get("index")
    if index is not None:
        index += offset
    raise ServerError(response.status_code, body.get("error", ""), body.get("detail", ""), index)


def _rank_body(query: Any, candidates: Sequence[Any], model: str | None) -> dict:
    body = {"query": to_payload(query, 0), "candidates": [to_payload(c, i) for i, c in enumerate(candidates)]}
    return _for_model(body, model)


def _for_model(body: dict, model: str | None) -> dict:
    """``body`` naming ``model`` (a server serving several); without one the server's default answers."""
    return body if model is None else {**body, "model": model}


def _ranked(response: httpx.Response, candidates: Sequence[Any]) -> list[RankedMatch]:
    return [
        RankedMatch(m["index"], m["clip_score"], m["cosine"], candidates[m["index"]])
        for m in response.json()["matches"]
    ]


def _retry_delay(response: httpx.Response | None, attempt: int, backoff_s: float) -> float:
    after = response.headers.get("Retry-After") if response is not None else None
    return max(float(after) if after and after.isdigit() else 0.0, backoff_s * 2**attempt)


class Client:
    """Synchronous client: ``Client("http://127.0.0.1:51000").encode(["a cat", "cat.jpg"])``."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:51000",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 5,
        backoff_s: float = 0.2,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)
        self.retries, self.backoff_s = retries, backoff_s

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, payload: dict, offset: int = 0, **kwargs: Any) -> httpx.Response:
        response = None
        for attempt in range(self.retries + 1):
            try:
                response = self._http.post(path, json=payload, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
            else:
                if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                    break
            time.sleep(_retry_delay(response, attempt, self.backoff_s))
        _raise_for(response, offset)
        return response

    def encode(
        self,
        inputs: Sequence[Any],
        batch_size: int = 32,
        show_progress: bool = False,
        max_request_mb: float = DEFAULT_REQUEST_MB,
        model: str | None = None,
    ) -> np.ndarray:
        """float32 ``[len(inputs), dim]``, L2-normalised, in input order, by ``model`` (one the
        server serves; default: its first).

        Inputs go in requests of at most ``batch_size`` items and about ``max_request_mb``
        (below the server's body limit, 16 MB by default)."""
        parts = []
        with tqdm(total=len(inputs), unit="item", disable=not show_progress, desc="encoding") as bar:
            for start, body in batched_bodies(inputs, batch_size, int(max_request_mb * 1024 * 1024)):
                parts.append(self._encode_batch(start, _for_model(body, model)))
                bar.update(len(body["inputs"]))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _encode_batch(self, start: int, body: dict) -> np.ndarray:
        try:
            response = self._post("/encode", body, offset=start, headers={"Accept": NPY})
        except ServerError as error:
            if not splits(error, body):
                raise
            return np.concatenate([self._encode_batch(s, half) for s, half in halves(start, body)])
        return np.load(io.BytesIO(response.content))

    def rank(self, query: Any, candidates: Sequence[Any], model: str | None = None) -> list[RankedMatch]:
        """Candidates sorted by ``clip_score`` (softmax of ``logit_scale × cosine``), best first."""
        return _ranked(self._post("/rank", _rank_body(query, candidates, model)), candidates)


class AsyncClient:
    """Asynchronous client; ``encode`` sends up to ``concurrency`` batches at once."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:51000",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 5,
        backoff_s: float = 0.2,
        concurrency: int = 4,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s)
        self.retries, self.backoff_s = retries, backoff_s
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _post(self, path: str, payload: dict, offset: int = 0, **kwargs: Any) -> httpx.Response:
        response = None
        async with self._slots:
            for attempt in range(self.retries + 1):
                try:
                    response = await self._http.post(path, json=payload, **kwargs)
                except httpx.TransportError:
                    if attempt == self.retries:
                        raise
                else:
                    if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                        break
                await asyncio.sleep(_retry_delay(response, attempt, self.backoff_s))
        _raise_for(response, offset)
        return response

    async def encode(
        self,
        inputs: Sequence[Any],
        batch_size: int = 32,
        show_progress: bool = False,
        max_request_mb: float = DEFAULT_REQUEST_MB,
        model: str | None = None,
    ) -> np.ndarray:
        """float32 ``[len(inputs), dim]``, L2-normalised, in input order (model and batches as
        :meth:`Client.encode`, up to ``concurrency`` of them in flight; inputs are read as their
        batch is built)."""
        bar = tqdm(total=len(inputs), unit="item", disable=not show_progress, desc="encoding")
        parts: dict[int, np.ndarray] = {}

        async def one(start: int, body: dict) -> None:
            parts[start] = await self._encode_batch(start, _for_model(body, model))
            bar.update(len(body["inputs"]))

        pending: set[asyncio.Task] = set()
        try:
            with bar:
                for start, body in batched_bodies(inputs, batch_size, int(max_request_mb * 1024 * 1024)):
                    if len(pending) >= self.concurrency:
                        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                        for task in done:
                            task.result()  # a failed batch stops the rest
                    pending.add(asyncio.create_task(one(start, body)))
                await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
        return np.concatenate([parts[s] for s in sorted(parts)]) if parts else np.zeros((0, 0), np.float32)

    async def _encode_batch(self, start: int, body: dict) -> np.ndarray:
        try:
            response = await self._post("/encode", body, offset=start, headers={"Accept": NPY})
        except ServerError as error:
            if not splits(error, body):
                raise
            first, second = halves(start, body)
            return np.concatenate([await self._encode_batch(*first), await self._encode_batch(*second)])
        return np.load(io.BytesIO(response.content))

    async def rank(
        self, query: Any, candidates: Sequence[Any], model: str | None = None
    ) -> list[RankedMatch]:
        """Candidates sorted by ``clip_score``, best first."""
        return _ranked(await self._post("/rank", _rank_body(query, candidates, model)), candidates)
