"""Weaviate's ``multi2vec-clip`` inference container: ``POST /vectorize``, ``GET /meta`` and the
``/.well-known/live|ready`` probes (Weaviate's ``CLIP_INFERENCE_API`` points here).

Weaviate sends texts and base64 images together and names no model: the server's default model
embeds them, in one call, so they batch with every other request.
"""

from fastapi import APIRouter, Request, Response
from pydantic import Field

from clipserve.errors import InvalidInput, RequestTooLarge
from clipserve.inputs import Item, wire_item
from clipserve.server.compat.shared import Tolerant
from clipserve.server.guard import OffLoopJSONRoute
from clipserve.server.models import ModelPool
from clipserve.settings import ServerSettings


def router(pool: ModelPool, settings: ServerSettings) -> APIRouter:
    """The multi2vec-clip routes, answered by ``pool``'s default model."""
    routes = APIRouter(route_class=OffLoopJSONRoute, tags=["weaviate"])

    class VectorizeRequest(Tolerant):
        texts: list[str] | None = Field(None, max_length=settings.max_items)
        images: list[str] | None = Field(None, max_length=settings.max_items, description="base64")

    @routes.post("/vectorize")
    async def vectorize(body: VectorizeRequest, request: Request) -> dict:
        """``{"textVectors", "imageVectors"}``: L2-normalised vectors of the texts and images, in order."""
        texts, images = body.texts or [], body.images or []
        if len(texts) + len(images) > settings.max_items:
            raise RequestTooLarge(
                f"{len(texts)} texts and {len(images)} images; the limit is {settings.max_items} items"
            )
        if not texts and not images:
            return {"textVectors": [], "imageVectors": []}
        items = [Item(i, "text", "text", text) for i, text in enumerate(texts)]
        items += [
            wire_item(len(texts) + j, "image", image, settings.allow_url) for j, image in enumerate(images)
        ]
        try:
            vectors, _ = await pool.embed(request.scope, pool.default, items)
        except InvalidInput as exc:
            if exc.index is None:
                raise
            where = f"texts[{exc.index}]" if exc.index < len(texts) else f"images[{exc.index - len(texts)}]"
            raise InvalidInput(f"{where}: {exc.reason}") from exc  # named once, as Weaviate numbers it
        return {"textVectors": vectors[: len(texts)].tolist(), "imageVectors": vectors[len(texts) :].tolist()}

    @routes.get("/meta")
    async def meta() -> dict:
        """The default model: its name and what runs it."""
        return {"model": pool.default.name, **pool.default.describe()}

    @routes.get("/.well-known/live", status_code=204)
    @routes.get("/.well-known/ready", status_code=204)
    async def probe() -> Response:
        """Alive (204)."""
        return Response(status_code=204)

    return routes
