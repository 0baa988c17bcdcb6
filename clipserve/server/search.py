"""The routes of a served index (``clipserve serve --index DIR``): ``POST /search``, thumbnails of
its image files, and clip-retrieval's clip-back API (``/knn-service``, ``/metadata``,
``/indices-list``) for its front end and clients.

A query is embedded by the index's model through the same service as ``/encode`` (its limits,
batching and metrics); the search itself runs on a worker thread. Thumbnails come only from files
of the index that lie under the folders it was built from, resolved with symbolic links followed.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Request
from fastapi import Path as PathParameter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from clipserve.errors import InvalidInput, NotFound, UnknownModel
from clipserve.families.towers import image_limits
from clipserve.index import Hit, Index, IndexMismatch
from clipserve.preprocess.image import ImageLimits, decoded_image
from clipserve.server import schemas
from clipserve.server.guard import OffLoopJSONRoute
from clipserve.server.models import ModelPool
from clipserve.settings import ServerSettings
from clipserve.zoo import canonical_name

THUMBNAIL_SIDE = 256
KNN_THUMBNAILS = 100
"""Most thumbnails one ``/knn-service`` answer decodes; later results carry their path only."""
DEDUP_COSINE = 0.94
"""clip-back's ``deduplicate``: results within this cosine of a better one go (its own value)."""


def search_router(index: Index, pool: ModelPool, settings: ServerSettings) -> APIRouter:
    """The routes of ``index``, whose model ``pool`` serves."""
    router = APIRouter(route_class=OffLoopJSONRoute)
    served = pool.find(index.model)
    name = index.directory.name
    limits = image_limits(settings)  # the process's decode budget, shared with /encode

    async def embedded(request: Request, item) -> np.ndarray:
        vectors, _ = await pool.embed(request.scope, served, [item])
        return vectors[0]

    def thumbnail_of(hit: Hit) -> str | None:
        media = hit.metadata.get("modality") == "image" and hit.metadata.get("path")
        return f"/search/thumbnail/{hit.key}" if media else None

    @router.post("/search", response_model=schemas.SearchResponse)
    async def search(body: schemas.SearchRequest, request: Request) -> dict:
        """The items of the served index nearest a text, an image, an audio clip, a vector or an item."""
        if body.model is not None and (canonical_name(body.model) or body.model) != index.model:
            raise IndexMismatch(f"the index {name} holds vectors of {index.model}, not of {body.model}")
        item = body.query.item(settings.allow_url)
        vector = None
        if item is not None:
            vector = await embedded(request, item)
        elif body.query.vector is not None:
            vector = index.query_vector(body.query.vector)
        hits = await run_in_threadpool(
            index.search,
            None,
            body.k,
            like=body.query.id,
            filter=body.filter,
            dedup=body.dedup,
            vector=vector,
        )
        results = [
            {"id": hit.id, "score": hit.score, "metadata": hit.metadata, "thumbnail": thumbnail_of(hit)}
            for hit in hits
        ]
        return {"model": index.model, "index": name, "results": results}

    @router.get("/search/thumbnail/{key}", response_class=Response)
    async def thumbnail(key: int = PathParameter(ge=0, le=schemas.MAX_ITEM_KEY)) -> Response:
        """A JPEG of at most 256 px of an indexed image, from the index's own folders only."""
        data = await run_in_threadpool(_thumbnail, index, key, limits)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/indices-list")
    async def indices_list() -> list[str]:
        """clip-back: the names of the served indices (one: the index directory's name)."""
        return [name]

    @router.post("/knn-service")
    async def knn_service(body: schemas.KnnRequest, request: Request) -> list[dict]:
        """clip-back: the nearest items to a text, an image (base64 or URL) or an embedding, with
        ``id``, ``similarity``, ``caption``, ``image_path`` and, for local images, ``image`` (a
        base64 JPEG thumbnail)."""
        _check_name(body.indice_name, name)
        given = [value for value in (body.text, body.image, body.image_url, body.embedding_input) if value]
        if len(given) != 1:
            raise InvalidInput("give one of text, image, image_url or embedding_input")
        if body.embedding_input is not None:
            vector = index.query_vector(body.embedding_input)
        elif body.text is not None:
            vector = await embedded(request, schemas.SearchQuery(text=body.text).item(False))
        else:
            source = body.image if body.image is not None else body.image_url
            vector = await embedded(request, schemas.SearchQuery(image=source).item(settings.allow_url))
        count = body.num_result_ids or body.num_images
        hits = await run_in_threadpool(
            index.search,
            None,
            min(count, body.num_images),
            filter={"modality": body.modality},
            dedup=DEDUP_COSINE if body.deduplicate else None,
            vector=vector,
        )
        return await run_in_threadpool(_knn_results, index, hits, limits)

    @router.post("/metadata")
    async def metadata(body: schemas.MetadataRequest) -> list[dict]:
        """clip-back: the metadata of items by their ids (``id`` of ``/knn-service``)."""
        _check_name(body.indice_name, name)
        found = index.store.lookup(body.ids)
        return [{"id": key, "metadata": _clip_back_metadata(found[key])} for key in body.ids if key in found]

    return router


def _check_name(given: str | None, name: str) -> None:
    if given is not None and given != name:
        raise UnknownModel(f"index {given!r} is not served here; this server serves {name!r}")


def _clip_back_metadata(entry) -> dict:
    """An entry as clip-back names its metadata columns."""
    caption = (
        entry.caption if entry.caption is not None else (Path(entry.path).name if entry.path else entry.id)
    )
    return {"caption": caption, "image_path": entry.path, "url": None, "id_in_index": entry.id}


def _knn_results(index: Index, hits: list[Hit], limits: ImageLimits) -> list[dict]:
    entries = index.store.lookup([hit.key for hit in hits])
    results = []
    for position, hit in enumerate(hits):
        result = {**_clip_back_metadata(entries[hit.key]), "id": hit.key, "similarity": hit.score}
        pictured = position < KNN_THUMBNAILS
        if pictured and hit.metadata.get("modality") == "image" and hit.metadata.get("path"):
            # a file gone or refused since the build: the result stays, without a picture
            with contextlib.suppress(InvalidInput, NotFound):
                result["image"] = base64.b64encode(_thumbnail(index, hit.key, limits)).decode()
        results.append(result)
    return results


def _thumbnail(index: Index, key: int, limits: ImageLimits) -> bytes:
    """The JPEG thumbnail of item ``key``; :class:`NotFound` for anything that is not an indexed
    image file under the index's folders (the answer does not tell which)."""
    entry = index.store.lookup([key]).get(key)
    refusal = NotFound(f"no image thumbnail for item {key}")
    if entry is None or entry.modality != "image" or not entry.path or not entry.root:
        raise refusal
    path = Path(os.path.realpath(entry.path))
    roots = [Path(os.path.realpath(root)) for root in index.roots]
    if not any(path.is_relative_to(root) for root in roots) or not path.is_file():
        raise refusal
    with decoded_image(path, None, limits, draft_edge=THUMBNAIL_SIDE) as image:  # JPEGs scaled in the decoder
        small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
