"""clipserve's own routes: ``POST /encode`` and ``POST /rank``."""

import io

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from clipserve.errors import InvalidInput
from clipserve.inputs import Item
from clipserve.server import schemas
from clipserve.server.guard import OffLoopJSONRoute
from clipserve.server.models import ModelPool
from clipserve.server.responses import json_response
from clipserve.settings import ServerSettings

NPY = "application/x-npy"


def router(pool: ModelPool, settings: ServerSettings) -> APIRouter:
    """``/encode`` and ``/rank`` over the models ``pool`` serves."""
    routes = APIRouter(route_class=OffLoopJSONRoute)
    bodies = schemas.request_models(settings.max_items)

    def items_of(inputs: list[schemas.Input]) -> list[Item]:
        return [x.item(i, settings.allow_url) for i, x in enumerate(inputs)]

    @routes.post("/encode", responses={200: {"model": schemas.EncodeResponse}})
    async def encode(body: bodies.encode, request: Request) -> Response:
        """Embed texts, images and audio, in order. ``Accept: application/x-npy`` returns a float32 .npy."""
        model = pool.chosen(request.scope, body.model)
        vectors, _ = await pool.embed(request.scope, model, items_of(body.inputs))
        if NPY in request.headers.get("accept", ""):
            buffer = io.BytesIO()
            np.save(buffer, vectors)
            headers = {"X-Clipserve-Model": model.name, "X-Clipserve-Dim": str(model.spec.dim)}
            return Response(buffer.getvalue(), media_type=NPY, headers=headers)
        return json_response({"model": model.name, "dim": model.spec.dim, "embeddings": vectors})

    @routes.post("/rank", response_model=schemas.RankResponse)
    async def rank(body: bodies.rank, request: Request) -> schemas.RankResponse:
        """Candidates sorted by clip_score: softmax over them of logit_scale × cosine to the query."""
        model = pool.chosen(request.scope, body.model)
        try:  # an item's index counts the query first; the answer names candidates from 0
            items = items_of([body.query, *body.candidates])
            async with pool.use(model) as service:  # the service ranks too: one load for both
                vectors, _ = await service.embed(items)
                order, scores, cosines = service.encoder.rank_vectors(
                    vectors[0], items[0].modality, vectors[1:], [item.modality for item in items[1:]]
                )
        except InvalidInput as exc:
            if exc.index == 0:
                raise InvalidInput(f"query: {exc.reason}") from exc
            raise InvalidInput(f"candidate: {exc.reason}", exc.index - 1) from exc
        matches = [schemas.RankedMatch(index=int(i), clip_score=scores[i], cosine=cosines[i]) for i in order]
        return schemas.RankResponse(model=model.name, matches=matches)

    return routes
