"""Request and response bodies (pydantic). Unknown fields are refused."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Input(Strict):
    """One input: exactly one of ``text`` or ``image`` (base64, a data URI, or a URL if allowed)."""

    text: str | None = None
    image: str | None = None

    @model_validator(mode="after")
    def one_field(self) -> Input:
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one of 'text' or 'image'")
        return self


class EncodeRequest(Strict):
    inputs: list[Input] = Field(min_length=1)


class EncodeResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


class RankRequest(Strict):
    query: Input
    candidates: list[Input] = Field(min_length=1)


class Match(BaseModel):
    index: int
    clip_score: float
    cosine: float


class RankResponse(BaseModel):
    model: str
    matches: list[Match]


class EmbeddingsRequest(Strict):
    """OpenAI's ``/v1/embeddings`` body; images go in ``input`` as data URIs."""

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


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
