"""infinity's ``POST /embeddings`` with its ``modality`` field (``text``, ``image`` or ``audio``;
media as URLs, when the server allows them, or data URIs) and ``GET /models``.

The body is OpenAI's plus ``modality``, so OpenAI's client reaches it with
``extra_body={"modality": "image"}``, as infinity's documentation shows.
"""

import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from clipserve.errors import InvalidInput
from clipserve.inputs import Item, wire_item
from clipserve.server.compat.shared import Tolerant
from clipserve.server.guard import OffLoopJSONRoute
from clipserve.server.models import ModelPool
from clipserve.server.responses import json_response, openai_embeddings
from clipserve.server.schemas import MODEL_NAME_CHARS
from clipserve.settings import ServerSettings

UNNAMED_MODEL = "default/not-specified"
"""The ``model`` infinity's client sends when none is given: the server's default model."""


def router(pool: ModelPool, settings: ServerSettings) -> APIRouter:
    """infinity's routes, over every model ``pool`` serves."""
    routes = APIRouter(route_class=OffLoopJSONRoute, tags=["infinity"])

    class EmbeddingsRequest(Tolerant):
        input: str | Annotated[list[str], Field(max_length=settings.max_items)]
        model: str = Field(UNNAMED_MODEL, max_length=MODEL_NAME_CHARS)
        modality: Literal["text", "image", "audio"] = "text"
        encoding_format: Literal["float", "base64"] = "float"
        dimensions: int = 0
        user: str | None = None

    @routes.post("/embeddings")
    async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
        """OpenAI's embeddings answer, with infinity's ``id`` and ``created``."""
        model = pool.find(None if body.model == UNNAMED_MODEL else body.model)
        if body.dimensions not in (0, model.spec.dim):
            raise InvalidInput(
                f"dimensions must be {model.spec.dim} for {model.name} (or 0), got {body.dimensions}"
            )
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not inputs:
            raise InvalidInput("input is empty")
        if body.modality == "text":
            items = [Item(i, "text", "text", text) for i, text in enumerate(inputs)]
        else:
            items = [wire_item(i, body.modality, value, settings.allow_url) for i, value in enumerate(inputs)]
        vectors, tokens = await pool.embed(request.scope, model, items)
        answer = openai_embeddings(model.name, vectors, tokens, body.encoding_format)
        return json_response({**answer, "id": f"infinity-{uuid.uuid4()}", "created": int(time.time())})

    @routes.get("/models")
    async def models() -> dict:
        """The served models, as infinity lists them."""
        data = [
            {
                "id": model.name,
                "object": "model",
                "owned_by": "clipserve",
                "created": 0,
                "backend": model.settings.backend,
                "capabilities": ["embed"],
                **model.describe(),
            }
            for model in pool.models.values()
        ]
        return {"object": "list", "data": data}

    return routes
