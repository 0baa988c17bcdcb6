"""OpenAI's embeddings API: ``POST /v1/embeddings`` and ``GET /v1/models``."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from clipserve.errors import InvalidInput
from clipserve.inputs import openai_item
from clipserve.server import schemas
from clipserve.server.guard import OffLoopJSONRoute
from clipserve.server.models import ModelPool
from clipserve.server.responses import json_response, openai_embeddings
from clipserve.settings import ServerSettings


def router(pool: ModelPool, settings: ServerSettings) -> APIRouter:
    """OpenAI's routes over the models ``pool`` serves."""
    routes = APIRouter(route_class=OffLoopJSONRoute)
    bodies = schemas.request_models(settings.max_items)

    @routes.post("/v1/embeddings", responses={200: {"model": schemas.EmbeddingsResponse}})
    async def embeddings(body: bodies.embeddings, request: Request) -> Response:
        """OpenAI-compatible embeddings; an input that is an image or audio data URI is embedded as such."""
        model = pool.chosen(request.scope, body.model)
        if body.dimensions is not None and body.dimensions != model.spec.dim:
            raise InvalidInput(f"dimensions must be {model.spec.dim} for {model.name}, got {body.dimensions}")
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not inputs:
            raise InvalidInput("input is empty")
        items = [openai_item(i, text, settings.allow_url) for i, text in enumerate(inputs)]
        vectors, tokens = await pool.embed(request.scope, model, items)
        return json_response(openai_embeddings(model.name, vectors, tokens, body.encoding_format))

    @routes.get("/v1/models")
    async def models() -> dict:
        """The served models, in OpenAI's list shape (the default first), with what each is and runs."""
        return {
            "object": "list",
            "data": [
                {
                    "id": model.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "clipserve",
                    **model.describe(),
                }
                for model in pool.models.values()
            ],
        }

    return routes
