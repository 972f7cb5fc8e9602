"""Request bodies of the HTTP API, validated by pydantic (422 on failure)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_K = 1000
Include = Literal["text", "metadata", "vector"]
DEFAULT_INCLUDE: tuple[Include, ...] = ("text", "metadata")


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]  # checked in pydantic-core


class VectorItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector: list[FiniteFloat] = Field(min_length=1)


class TextItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1)


ArithmeticItem = str | TextItem | VectorItem


class SearchRequest(BaseModel):
    """One query: `query` (text), `vector`, or `positive`/`negative` (vector arithmetic)."""

    model_config = ConfigDict(extra="forbid")

    query: str | None = None
    vector: list[FiniteFloat] | None = Field(default=None, min_length=1)
    positive: list[ArithmeticItem] = Field(default_factory=list)
    negative: list[ArithmeticItem] = Field(default_factory=list)
    k: int = Field(default=10, ge=1, le=MAX_K)
    nprobe: int | None = Field(default=None, ge=1)
    ef_search: int | None = Field(default=None, ge=1)
    filter: dict[str, Any] | None = None
    include: list[Include] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("the query is empty")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRequest:
        kinds = [
            self.query is not None,
            self.vector is not None,
            bool(self.positive or self.negative),
        ]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of: query (text), vector, or positive/negative")
        return self


class BatchSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[SearchRequest] = Field(min_length=1, max_length=1000)


MAX_BATCH_VECTORS = 10_000


class VectorBatchRequest(BaseModel):
    """Many query vectors sharing one set of parameters: `vectors` as rows of floats, or
    with `encoding_format` "base64" one base64 string of little-endian float32 values,
    row after row (as the OpenAI embeddings API returns them): no JSON numbers to parse."""

    model_config = ConfigDict(extra="forbid")

    vectors: str | list[list[FiniteFloat]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    k: int = Field(default=10, ge=1, le=MAX_K)
    nprobe: int | None = Field(default=None, ge=1)
    ef_search: int | None = Field(default=None, ge=1)
    filter: dict[str, Any] | None = None
    include: list[Include] = Field(default_factory=list)

    @model_validator(mode="after")
    def _format_matches(self) -> VectorBatchRequest:
        if (self.encoding_format == "base64") != isinstance(self.vectors, str):
            raise ValueError(
                'encoding_format "base64" takes one base64 string of float32 values; '
                '"float" (the default) takes a list of vectors'
            )
        if isinstance(self.vectors, list) and len(self.vectors) > MAX_BATCH_VECTORS:
            raise ValueError(f"at most {MAX_BATCH_VECTORS} vectors per request")
        return self


def parse_batch(data: Any) -> BatchSearchRequest | VectorBatchRequest:
    """A /v1/search/batch body: `queries` (each its own search) or `vectors` (one search)."""
    if isinstance(data, dict) and "vectors" in data:
        return VectorBatchRequest.model_validate(data)
    return BatchSearchRequest.model_validate(data)


class EmbeddingsRequest(BaseModel):
    """The OpenAI embeddings request; fields its clients send and we do not use are accepted."""

    model_config = ConfigDict(extra="allow")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: str | list[str]) -> str | list[str]:
        texts = [v] if isinstance(v, str) else v
        if not texts or any(not t for t in texts):
            raise ValueError("input must be a non-empty string or a list of non-empty strings")
        if len(texts) > 2048:
            raise ValueError("at most 2048 inputs per request")
        return v


class RecommendRequest(BaseModel):
    """Items for a user of the served recommender, the items they have left out."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1)
    k: int = Field(default=10, ge=1, le=MAX_K)
    include: list[Include] = Field(default_factory=list)


class UpsertDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


class UpsertRequest(BaseModel):
    """Documents to add or replace (by id), embedded with the index's model."""

    model_config = ConfigDict(extra="forbid")

    documents: list[UpsertDocument] = Field(min_length=1, max_length=1000)


class DeleteRequest(BaseModel):
    """Ids of documents to remove from the index."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=10_000)
