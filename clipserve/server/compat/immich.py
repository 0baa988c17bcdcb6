"""immich's machine-learning service: ``POST /predict`` (smart search's CLIP image and text
embeddings) and ``GET /ping`` (immich's ``IMMICH_MACHINE_LEARNING_URL`` points here).

immich names models its own way (``ViT-B-32__openai``, ``XLM-Roberta-Large-Vit-B-16Plus``,
``nllb-clip-base-siglip__v1``, optionally ``immich-app/…``); :func:`zoo_name` maps them onto the
zoo, and the model must be one this server serves. Its other tasks (faces, OCR) are not served:
they answer 422 saying so.
"""

import io

import orjson
from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from PIL import Image

from clipserve.errors import InvalidInput, UnknownModel, echo
from clipserve.inputs import Item
from clipserve.server.guard import OffLoopJSONRoute
from clipserve.server.models import ModelPool
from clipserve.server.responses import json_response
from clipserve.settings import ServerSettings
from clipserve.zoo import canonical_name

CLIP_TYPES = ("visual", "textual")


def zoo_name(immich_name: str) -> str | None:
    """The zoo name of an immich model name, or None when the zoo has no such model.

    immich keeps the part after the last ``/`` and writes open_clip's ``ARCH::TAG`` as
    ``ARCH__TAG`` (some tags with ``-`` for ``_``); M-CLIP's text models have no tag.
    """
    name = immich_name.rsplit("/", 1)[-1]
    arch, separator, tag = name.partition("__")
    candidates = [f"{arch}::{tag}", f"{arch}::{tag.replace('-', '_')}"] if separator else [f"M-CLIP::{name}"]
    return next((found for candidate in candidates if (found := canonical_name(candidate))), None)


def router(pool: ModelPool, settings: ServerSettings) -> APIRouter:
    """immich's routes, over the models ``pool`` serves."""
    routes = APIRouter(route_class=OffLoopJSONRoute, tags=["immich"])

    @routes.post("/predict")
    async def predict(
        request: Request,
        entries: str = Form(description='e.g. {"clip": {"visual": {"modelName": "ViT-B-32__openai"}}}'),
        image: UploadFile | None = None,
        text: str | None = Form(None),
    ) -> Response:
        """``{"clip": "<the vector as a JSON array>"}``; for an image, with its height and width."""
        if image is None and text is None:
            raise InvalidInput("Either image or text must be provided")
        kind, model_name = clip_entry(entries)
        if kind == "visual" and image is None:
            raise InvalidInput("a clip visual entry needs an image")
        if kind == "textual" and text is None:
            raise InvalidInput("a clip textual entry needs a text")
        mapped = zoo_name(model_name)
        if mapped is None:
            raise UnknownModel(f"immich model {echo(model_name)!r} has no counterpart in clipserve's zoo")
        model = pool.find(mapped)
        if kind == "textual":
            vectors, _ = await pool.embed(request.scope, model, [Item(0, "text", "text", text)])
            return json_response(
                {"clip": orjson.dumps(vectors[0], option=orjson.OPT_SERIALIZE_NUMPY).decode()}
            )
        data = await image.read()
        vectors, _ = await pool.embed(request.scope, model, [Item(0, "image", "bytes", data)])
        width, height = Image.open(io.BytesIO(data)).size  # decoded once already: the header is sound
        return json_response(
            {
                "clip": orjson.dumps(vectors[0], option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                "imageHeight": height,
                "imageWidth": width,
            }
        )

    @routes.get("/ping", response_class=PlainTextResponse)
    async def ping() -> str:
        """``pong``: alive."""
        return "pong"

    return routes


def clip_entry(entries: str) -> tuple[str, str]:
    """``(visual | textual, model name)`` of an ``entries`` form field that asks for one CLIP
    embedding; anything else is :class:`InvalidInput` saying what is not served."""
    try:
        parsed = orjson.loads(entries)
    except orjson.JSONDecodeError:
        raise InvalidInput("Invalid request format: entries is not JSON") from None
    if not isinstance(parsed, dict) or not parsed:
        raise InvalidInput("Invalid request format: entries must be an object of tasks")
    if others := sorted(task for task in parsed if task != "clip"):
        raise InvalidInput(f"clipserve serves immich's clip task only, not {', '.join(map(echo, others))}")
    types = parsed["clip"]
    if not isinstance(types, dict) or len(types) != 1 or next(iter(types)) not in CLIP_TYPES:
        raise InvalidInput('Invalid request format: clip must hold one of "visual" or "textual"')
    kind, entry = next(iter(types.items()))
    name = entry.get("modelName") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"Invalid request format: clip.{kind}.modelName is missing")
    return kind, name
