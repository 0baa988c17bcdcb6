"""HTTP client for a clipserve server, sync (:class:`Client`) and async (:class:`AsyncClient`).

Inputs are taken like :meth:`clipserve.encoder.Encoder.encode`: texts, image paths (``str`` naming
a file, or ``Path``), ``bytes``, data URIs, PIL images and ``[H, W, 3]`` uint8 arrays. Large inputs are
sent in batches (``.npy`` answers), with a progress bar on request; a busy server (503) is retried
with exponential backoff, honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from clipserve.errors import ClipserveError, InvalidInput

NPY = "application/x-npy"
RETRY_STATUSES = frozenset({502, 503, 504})


class ServerError(ClipserveError):
    """The server answered with an error; ``status``, ``error``, ``detail`` and ``index`` say what."""

    def __init__(self, status: int, error: str, detail: str, index: int | None) -> None:
        self.status, self.error, self.detail, self.index = status, error, detail, index
        super().__init__(f"{status} {error}: {detail}")


@dataclass(frozen=True)
class Ranked:
    """One candidate of :meth:`Client.rank`, best first."""

    index: int
    clip_score: float
    cosine: float


def to_payload(value: Any, index: int) -> dict[str, str]:
    """One input as the server's ``{"text": ...}`` or ``{"image": base64 | data URI | URL}``."""
    if isinstance(value, str):
        if value.startswith(("data:", "http://", "https://")):
            return {"image": value}
        if _names_file(value):
            return {"image": base64.b64encode(Path(value).read_bytes()).decode()}
        return {"text": value}
    if isinstance(value, os.PathLike):
        return {"image": base64.b64encode(Path(value).read_bytes()).decode()}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"image": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
            raise InvalidInput(
                f"only uint8 [H, W, 3] arrays are sent, got {value.dtype} {list(value.shape)}", index
            )
        value = Image.fromarray(value)
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"image": base64.b64encode(buffer.getvalue()).decode()}
    raise InvalidInput(f"unsupported input type {type(value).__name__}", index)


def _names_file(value: str) -> bool:
    try:
        return len(value) < 4096 and "\n" not in value and Path(value).is_file()
    except (OSError, ValueError):
        return False


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


def _encode_body(inputs: Sequence[Any], start: int, batch_size: int) -> dict:
    chunk = inputs[start : start + batch_size]
    return {"inputs": [to_payload(x, start + i) for i, x in enumerate(chunk)]}


def _rank_body(query: Any, candidates: Sequence[Any]) -> dict:
    return {"query": to_payload(query, 0), "candidates": [to_payload(c, i) for i, c in enumerate(candidates)]}


def _ranked(response: httpx.Response) -> list[Ranked]:
    return [Ranked(m["index"], m["clip_score"], m["cosine"]) for m in response.json()["matches"]]


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

    def encode(self, inputs: Sequence[Any], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """float32 ``[len(inputs), dim]``, L2-normalised, in input order."""
        parts = []
        with tqdm(total=len(inputs), unit="item", disable=not show_progress, desc="encoding") as bar:
            for start in range(0, len(inputs), batch_size):
                body = _encode_body(inputs, start, batch_size)
                response = self._post("/encode", body, offset=start, headers={"Accept": NPY})
                parts.append(np.load(io.BytesIO(response.content)))
                bar.update(len(body["inputs"]))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def rank(self, query: Any, candidates: Sequence[Any]) -> list[Ranked]:
        """Candidates sorted by ``clip_score`` (softmax of ``logit_scale × cosine``), best first."""
        return _ranked(self._post("/rank", _rank_body(query, candidates)))


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
        self, inputs: Sequence[Any], batch_size: int = 32, show_progress: bool = False
    ) -> np.ndarray:
        """float32 ``[len(inputs), dim]``, L2-normalised, in input order."""
        bar = tqdm(total=len(inputs), unit="item", disable=not show_progress, desc="encoding")

        async def one(start: int) -> np.ndarray:
            body = _encode_body(inputs, start, batch_size)
            response = await self._post("/encode", body, offset=start, headers={"Accept": NPY})
            bar.update(len(body["inputs"]))
            return np.load(io.BytesIO(response.content))

        with bar:
            parts = await asyncio.gather(*(one(s) for s in range(0, len(inputs), batch_size)))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    async def rank(self, query: Any, candidates: Sequence[Any]) -> list[Ranked]:
        """Candidates sorted by ``clip_score``, best first."""
        return _ranked(await self._post("/rank", _rank_body(query, candidates)))
