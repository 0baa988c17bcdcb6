"""Hugging Face text-embeddings-inference (TEI): ``POST /embed`` and ``GET /info`` (``GET
/health`` is shared with infinity); what ``huggingface_hub.InferenceClient.feature_extraction``
and TEI's other clients call.

clipserve's vectors are always L2-normalised and its text towers truncate at the context length,
as CLIP was trained. ``normalize: false`` is refused rather than answered with normalised vectors.
``truncate`` left out truncates, as TEI started with ``--auto-truncate`` does; ``truncate: false``
refuses a text that fills the whole context (422), as TEI refuses an over-long one.
"""

from importlib.metadata import version
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from clipserve.errors import ClipserveError, InvalidInput
from clipserve.inputs import Item
from clipserve.server.compat.shared import Tolerant
from clipserve.server.guard import OffLoopJSONRoute
from clipserve.server.models import ModelPool
from clipserve.server.responses import json_response
from clipserve.settings import ServerSettings


class EmptyInput(ClipserveError):
    """TEI's answer to an empty ``inputs``: 400."""

    http_status = 400


def router(pool: ModelPool, settings: ServerSettings) -> APIRouter:
    """TEI's routes, answered by ``pool``'s default model (TEI serves one model)."""
    routes = APIRouter(route_class=OffLoopJSONRoute, tags=["tei"])

    class EmbedRequest(Tolerant):
        inputs: str | Annotated[list[str], Field(max_length=settings.max_items)]
        normalize: bool = True
        truncate: bool | None = None
        truncation_direction: Literal["Right", "right", "Left", "left"] = "Right"
        prompt_name: str | None = None

    @routes.post("/embed")
    @routes.post("/", include_in_schema=False)  # where huggingface_hub's InferenceClient posts
    async def embed(body: EmbedRequest, request: Request) -> Response:
        """``[[float]]``: one L2-normalised vector per input."""
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if not texts:
            raise EmptyInput("Input validation error: `inputs` cannot be empty")
        if not body.normalize:
            raise InvalidInput(
                "clipserve's vectors are L2-normalised (CLIP's cosine space): normalize must be true"
            )
        if body.truncation_direction.lower() != "right":
            raise InvalidInput("CLIP's text towers truncate on the right: truncation_direction must be Right")
        if body.prompt_name is not None:
            raise InvalidInput("this model has no prompts: prompt_name is not served")
        model = pool.default
        vectors, tokens = await pool.embed(
            request.scope, model, [Item(i, "text", "text", t) for i, t in enumerate(texts)]
        )
        limit = model.spec.context_length
        if (
            body.truncate is False
            and (full := next((i for i, n in enumerate(tokens) if n >= limit), None)) is not None
        ):
            raise InvalidInput(
                f"Input validation error: inputs[{full}] fills the model's {limit}-token context; "
                "send it shorter, or truncate: true",
                full,
            )
        return json_response(vectors)

    @routes.get("/info")
    async def info() -> dict:
        """The served model, in TEI's ``/info`` fields."""
        model = pool.default
        pooling = "mean" if model.spec.family == "mclip" else "last_token"
        return {
            "model_id": model.name,
            "model_sha": None,
            "model_dtype": model.settings.precision,
            "model_type": {"embedding": {"pooling": pooling}},
            "max_concurrent_requests": settings.max_connections,
            "max_input_length": model.spec.context_length,
            "max_batch_tokens": settings.max_items * model.spec.context_length,
            "max_batch_requests": None,
            "max_client_batch_size": settings.max_items,
            "auto_truncate": True,
            "tokenization_workers": 1,
            "version": f"clipserve {version('clipserve')}",
            "sha": None,
            "docker_label": None,
        }

    return routes
