"""Request and response bodies (pydantic). Unknown fields are refused; list lengths are bounded
by the server's ``max_items``, checked before any item is validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clipserve.inputs import Item, wire_item

MODEL_NAME_CHARS = 200
MAX_ITEM_KEY = 2**63 - 1
ItemKey = Annotated[int, Field(ge=0, le=MAX_ITEM_KEY)]
"""An index item's key: SQLite's integers are signed 64-bit."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Input(Strict):
    """One input: exactly one of ``text``, ``image`` or ``audio`` (media as base64, a data URI, or a
    URL when the server allows URLs)."""

    text: str | None = None
    image: str | None = None
    audio: str | None = None

    @model_validator(mode="after")
    def one_field(self) -> Input:
        given = [name for name in ("text", "image", "audio") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'text', 'image' or 'audio'")
        return self

    def item(self, index: int, allow_url: bool) -> Item:
        modality = "text" if self.text is not None else "image" if self.image is not None else "audio"
        return wire_item(index, modality, getattr(self, modality), allow_url)


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one server, their lists bounded by its ``max_items``."""

    encode: type[BaseModel]
    rank: type[BaseModel]
    embeddings: type[BaseModel]


def request_models(max_items: int) -> RequestModels:
    """Request bodies whose lists hold at most ``max_items`` (``rank``: the query and candidates)."""

    class EncodeRequest(Strict):
        inputs: list[Input] = Field(min_length=1, max_length=max_items)
        model: str | None = Field(
            None,
            max_length=MODEL_NAME_CHARS,
            description="a served model (GET /v1/models); default: the first",
        )

    class RankRequest(Strict):
        query: Input
        candidates: list[Input] = Field(min_length=1, max_length=max(1, max_items - 1))
        model: str | None = Field(
            None,
            max_length=MODEL_NAME_CHARS,
            description="a served model (GET /v1/models); default: the first",
        )

    class EmbeddingsRequest(Strict):
        """OpenAI's ``/v1/embeddings`` body; images and audio go in ``input`` as data URIs."""

        input: str | Annotated[list[str], Field(max_length=max_items)]
        model: str | None = Field(None, max_length=MODEL_NAME_CHARS)
        encoding_format: Literal["float", "base64"] = "float"
        dimensions: int | None = None
        user: str | None = None

    return RequestModels(EncodeRequest, RankRequest, EmbeddingsRequest)


class SearchQuery(Strict):
    """A search query: exactly one of ``text``, ``image``, ``audio`` (as in ``/encode``), ``vector``
    (the index's dimension) or ``id`` (an indexed item: more like it)."""

    text: str | None = None
    image: str | None = None
    audio: str | None = None
    vector: list[float] | None = Field(None, max_length=8192)
    id: str | None = Field(None, max_length=4096)

    @model_validator(mode="after")
    def one_field(self) -> SearchQuery:
        given = [
            name for name in ("text", "image", "audio", "vector", "id") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of 'text', 'image', 'audio', 'vector' or 'id'")
        return self

    def item(self, allow_url: bool) -> Item | None:
        """The query as an item to embed (None for a vector or an id)."""
        for modality in ("text", "image", "audio"):
            value = getattr(self, modality)
            if value is not None:
                return wire_item(0, modality, value, allow_url)
        return None


class SearchRequest(Strict):
    query: SearchQuery
    k: int = Field(10, ge=1, le=1000, description="how many results")
    filter: dict[str, str | list[str]] | None = Field(
        None, max_length=8, description="metadata to match: modality, root, path, caption, id, path_prefix"
    )
    dedup: float | None = Field(
        None, gt=0, le=1, description="drop results within this cosine of a better one"
    )
    model: str | None = Field(None, max_length=MODEL_NAME_CHARS, description="must be the index's model")


class SearchHit(BaseModel):
    id: str
    score: float
    metadata: dict
    thumbnail: str | None = None


class SearchResponse(BaseModel):
    model: str
    index: str
    results: list[SearchHit]


class KnnRequest(BaseModel):
    """clip-retrieval's ``/knn-service`` body (its clip-back's fields; others its front end sends,
    such as the safety options, are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")
    text: str | None = None
    image: str | None = None
    image_url: str | None = None
    embedding_input: list[float] | None = Field(None, max_length=8192)
    modality: Literal["image", "text"] = "image"
    num_images: int = Field(100, ge=1, le=1000)
    num_result_ids: int | None = Field(None, ge=1, le=10000)
    indice_name: str | None = None
    deduplicate: bool = False


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ids: list[ItemKey] = Field(max_length=10000)
    indice_name: str | None = None


class EncodeResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


class RankedMatch(BaseModel):
    """A candidate of ``/rank``, best first (``clipserve.vectors.RankedMatch`` on the wire)."""

    index: int
    clip_score: float
    cosine: float


class RankResponse(BaseModel):
    model: str
    matches: list[RankedMatch]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage
