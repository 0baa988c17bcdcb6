"""Which API a path belongs to, and the error body each API answers with.

clipserve's own routes answer ``{"error", "detail", "index"}``; OpenAI's (``/v1/...``) and
infinity's ``{"error": {"message", "type", "param", "code"}}``; the other compat routes
(``--compat``) the shape their clients read. The table is static (the proxy in front of Ray
replicas has no settings): a path of an API that is not enabled answers 404 in that API's shape.
The API also labels the request metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

ErrorShape = Callable[[int, str, str, "int | None"], dict]
"""``(status, error name, detail, item index) -> body``."""


def clipserve_error(status: int, error: str, detail: str, index: int | None) -> dict:
    return {"error": error, "detail": detail, "index": index}


def openai_error(status: int, error: str, detail: str, index: int | None) -> dict:
    return {"error": {"message": detail, "type": error, "param": None, "code": index}}


def infinity_error(status: int, error: str, detail: str, index: int | None) -> dict:
    """infinity's OpenAI-shaped error, whose ``code`` is the HTTP status."""
    return {"error": {"message": detail, "type": error, "param": None, "code": status}}


def weaviate_error(status: int, error: str, detail: str, index: int | None) -> dict:
    """multi2vec-clip's ``{"error": str}``: Weaviate fails any status over 399 with it."""
    return {"error": f"{error}: {detail}"}


def immich_error(status: int, error: str, detail: str, index: int | None) -> dict:
    """immich's machine learning is FastAPI: ``{"detail": str}``."""
    return {"detail": f"{error}: {detail}"}


TEI_ERROR_TYPES = {400: "Empty", 413: "Validation", 422: "Validation", 429: "Overloaded", 503: "Overloaded"}


def tei_error(status: int, error: str, detail: str, index: int | None) -> dict:
    """text-embeddings-inference's ``{"error", "error_type"}``."""
    return {"error": detail, "error_type": TEI_ERROR_TYPES.get(status, error)}


@dataclass(frozen=True)
class Api:
    name: str
    error_body: ErrorShape
    statuses: Mapping[str, int] = field(default_factory=dict)
    """The status an error (by name) answers with where this API's product differs from clipserve."""

    def status_of(self, error: str, status: int) -> int:
        return self.statuses.get(error, status)


CLIPSERVE = Api("clipserve", clipserve_error)
OPENAI = Api("openai", openai_error)
WEAVIATE = Api("weaviate", weaviate_error)
IMMICH = Api("immich", immich_error)
TEI = Api("tei", tei_error)
INFINITY = Api("infinity", infinity_error, {"InvalidInput": 400})  # infinity: 400, OpenAI's BadRequest

COMPAT_PATHS: dict[str, Api] = {
    "/vectorize": WEAVIATE,
    "/meta": WEAVIATE,
    "/.well-known/live": WEAVIATE,
    "/.well-known/ready": WEAVIATE,
    "/predict": IMMICH,
    "/ping": IMMICH,
    "/embed": TEI,
    "/info": TEI,
    "/health": TEI,  # infinity's too: it answers 200 either way
    "/embeddings": INFINITY,
    "/models": INFINITY,
}
"""Every path of the compat routers (``clipserve.server.compat``), with its API."""

PROBE_PATHS = frozenset({"/.well-known/live", "/.well-known/ready", "/ping", "/health"})
"""Compat health probes: open without the API key, as ``/healthz`` is."""


def api_of(path: str, method: str = "GET") -> Api:
    """The API whose route ``path`` is (clipserve's for any path of no other API; ``POST /`` is
    TEI's, where ``huggingface_hub``'s client posts)."""
    if (api := COMPAT_PATHS.get(path)) is not None:
        return api
    if path == "/" and method == "POST":
        return TEI
    return OPENAI if path.startswith("/v1/") else CLIPSERVE
