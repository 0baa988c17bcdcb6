"""Request and response bodies (pydantic). Unknown fields are refused; list lengths are bounded
by the server's ``max_items``, checked before any item is validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clipserve.inputs import Item, wire_item

MODEL_NAME_CHARS = 200


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


class EncodeResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


class Match(BaseModel):
    index: int
    clip_score: float
    cosine: float


class RankResponse(BaseModel):
    model: str
    matches: list[Match]


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


class ErrorBody(BaseModel):
    error: str
    detail: str
    index: int | None = None
