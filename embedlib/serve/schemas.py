"""Request and response bodies of the HTTP API. FastAPI validates requests against them
(422 on failure) and /openapi.json declares them, so /docs can send real requests and
clients can be generated from the schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from embedlib.exceptions import QueryError
from embedlib.index.store.docs import NOT_METADATA
from embedlib.search.query import MAX_K, Hit, Include, Query, VectorBatch

# What one request may cost, beyond what one query may ask (search/query.py): each
# over-the-cap request is a 422 naming the cap and the value sent; README "Limits".
MAX_BATCH_QUERIES = 1000
MAX_BATCH_VECTORS = 10_000
MAX_HITS = 100_000  # hits one request asks for: queries (or vectors) x k
MAX_WORK = 1_000_000  # what one request may walk: queries x (k + excluded ids) x passages
MAX_REQUEST_TEXT_CHARS = 2_000_000  # the texts one request embeds (queries and text items)
MAX_VECTOR_HITS = 10_000  # hits with `include: ["vector"]`, per request
MAX_EMBED_CHARS = 2_000_000  # the texts of one /v1/embeddings request, together
MAX_METADATA_KEYS = 64  # metadata keys of one upserted document (each becomes a column)
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 10_000
# names the docs tables use themselves: metadata under them would overwrite the row's own
RESERVED_COLUMNS = frozenset({"id", "text", "vector", *NOT_METADATA})


def check_hits(requests: list[tuple[int, int, bool]]) -> None:
    """Refuse a request whose searches ask for too many hits: (queries, k, vectors
    included) per part of the request."""
    hits = sum(n * k for n, k, _ in requests)
    if hits > MAX_HITS:
        raise QueryError(f"this request asks for {hits} hits (queries x k); the cap is {MAX_HITS}")
    vectors = sum(n * k for n, k, with_vectors in requests if with_vectors)
    if vectors > MAX_VECTOR_HITS:
        raise QueryError(
            f"this request asks for {vectors} hits with their vectors; the cap is "
            f"{MAX_VECTOR_HITS}: include fewer hits or leave out the vector"
        )


def check_work(requests: list[tuple[int, int]]) -> None:
    """Refuse a request whose searches would walk too much: (queries, work per query)."""
    work = sum(n * w for n, w in requests)
    if work > MAX_WORK:
        raise QueryError(
            f"this request asks for queries x (k + excluded ids) x passages = {work}; the cap "
            f"is {MAX_WORK}: send fewer queries, a smaller k or fewer excluded ids"
        )


class BatchSearchRequest(BaseModel):
    """Several searches, each with its own parameters."""

    model_config = ConfigDict(extra="forbid")
    queries: list[Query] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)

    @model_validator(mode="after")
    def _hits(self) -> BatchSearchRequest:
        check_hits([(1, q.k, "vector" in q.include) for q in self.queries])
        check_work([(1, q.work) for q in self.queries])
        chars = sum(len(t) for q in self.queries for t in q.texts())
        if chars > MAX_REQUEST_TEXT_CHARS:
            raise ValueError(
                f"the texts of this request hold {chars} characters to embed; the cap is "
                f"{MAX_REQUEST_TEXT_CHARS}"
            )
        return self


class VectorBatchRequest(VectorBatch):
    """Many query vectors sharing one set of parameters (`VectorBatch`), within the
    request caps."""

    @model_validator(mode="after")
    def _within_caps(self) -> VectorBatchRequest:
        if isinstance(self.vectors, list):
            if len(self.vectors) > MAX_BATCH_VECTORS:
                raise ValueError(f"at most {MAX_BATCH_VECTORS} vectors per request")
            check_hits([(len(self.vectors), self.k, "vector" in self.include)])
            check_work([(len(self.vectors), self.work)])
        return self  # base64: the gateway counts the rows once it knows the dimension


def _batch_kind(data: Any) -> str:
    if isinstance(data, dict):
        return "vectors" if "vectors" in data else "queries"
    return "vectors" if isinstance(data, VectorBatchRequest) else "queries"


BatchRequest = Annotated[
    Annotated[BatchSearchRequest, Tag("queries")] | Annotated[VectorBatchRequest, Tag("vectors")],
    Discriminator(_batch_kind),
]


class EmbeddingsRequest(BaseModel):
    """The OpenAI embeddings request; fields its clients send and we do not use are accepted."""

    model_config = ConfigDict(extra="allow")

    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=2048)]
    )
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
        chars = sum(map(len, texts))
        if chars > MAX_EMBED_CHARS:
            raise ValueError(f"the inputs hold {chars} characters; the cap is {MAX_EMBED_CHARS}")
        return v


class RecommendRequest(BaseModel):
    """Items for a user of the served recommender, the items they have left out."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1)
    k: int = Field(default=10, ge=1, le=MAX_K)
    include: list[Include] = Field(default_factory=list)


INT64 = (-(2**63), 2**63 - 1)
# what `UpsertDocument._plain_metadata` enforces, stated in the JSON schema (the server
# states the index's own columns and their types on top: openapi.ServedFacts)
METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": MAX_METADATA_KEYS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_METADATA_KEY_CHARS, "pattern": "^[^_]",
                      "not": {"enum": sorted(RESERVED_COLUMNS)}},
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS},
            {"type": "integer", "minimum": INT64[0], "maximum": INT64[1]},
            {"type": "number", "not": {"type": "integer"}}, {"type": "boolean"},
            {"type": "null"},
        ]
    },
}  # fmt: skip


class UpsertDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    metadata: Annotated[dict[str, Any], WithJsonSchema(METADATA_SCHEMA)] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_KEYS,
        description=f"at most {MAX_METADATA_KEYS} keys of up to {MAX_METADATA_KEY_CHARS} "
        f"characters; values null, booleans, numbers or strings of up to "
        f"{MAX_METADATA_VALUE_CHARS} characters; not the names the index uses itself",
    )

    @field_validator("metadata")
    @classmethod
    def _plain_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if key in RESERVED_COLUMNS or key.startswith("_"):
                raise ValueError(
                    f"metadata key {key!r} is a name the index uses itself "
                    f"({', '.join(sorted(RESERVED_COLUMNS))}, and names starting with _)"
                )
            if not key or len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"metadata keys have 1 to {MAX_METADATA_KEY_CHARS} characters")
            if item is not None and not isinstance(item, bool | int | float | str):
                raise ValueError(
                    f"metadata {key!r}: a value is null, a boolean, a number or a string"
                )
            if isinstance(item, int) and not INT64[0] <= item <= INT64[1]:
                raise ValueError(f"metadata {key!r}: integers are 64-bit (got {item})")
            if isinstance(item, str) and len(item) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(
                    f"metadata {key!r}: a string of up to {MAX_METADATA_VALUE_CHARS} characters"
                )
        return value


class UpsertRequest(BaseModel):
    """Documents to add or replace (by id), embedded with the index's model."""

    model_config = ConfigDict(extra="forbid")

    documents: list[UpsertDocument] = Field(min_length=1, max_length=1000)


class DeleteRequest(BaseModel):
    """Ids of documents to remove from the index."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=10_000)


# -- responses ---------------------------------------------------------------------------


class SearchResponse(BaseModel):
    results: list[Hit]
    metric: str
    timing_ms: dict[str, float]


class BatchSearchResponse(BaseModel):
    results: list[list[Hit]]
    metric: str
    timing_ms: dict[str, float] | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: dict[str, int]


class RecommendResponse(BaseModel):
    user: str
    results: list[Hit]
    fallback: Literal["popular"] | None
    reason: str | None = None
    timing_ms: dict[str, float] | None = None


class WriteAccepted(BaseModel):
    """A write taken: it runs outside the serving replicas; follow it at `status_url`."""

    write_id: str
    status: Literal["queued", "running", "done", "failed"]
    status_url: str
    submitted_at: float
    documents: int
    deletes: int


class WriteError(BaseModel):
    code: str
    message: str


class WriteStatus(BaseModel):
    """A write's state. Once `done`: the version it published (null when nothing
    changed), its counts, and whether the app switched to it (a write's switch goes only
    forward: an older version than the one served is not deployed; `switch_error` says
    why a switch failed and what is served). A reload's record (kind "reload") names the
    version it switches to (`version`) and from (`previous`); `failed` with the code
    `switch_failed` when the new replicas did not start and the old version was
    deployed again."""

    write_id: str
    kind: Literal["write", "reload"] = "write"
    status: Literal["queued", "running", "done", "failed"]
    submitted_at: float
    documents: int
    deletes: int
    finished_at: float | None = None
    version: str | None = None
    previous: str | None = None
    added: int | None = None
    changed: int | None = None
    deleted: int | None = None
    warnings: list[str] = []
    switched: bool | None = None
    switch_error: str | None = None
    resumed: bool | None = Field(
        default=None,
        description="run again by a keeper that took over (the one that "
        "accepted it died or its server stopped before it finished)",
    )
    error: WriteError | None = None


class ReloadRequest(BaseModel):
    """Which version to serve: the one named (a rollback, or a version published by
    hand), else the one CURRENT names now."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, pattern=r"^v-\d{5,}$", examples=["v-00002"])


class ReloadResponse(BaseModel):
    """Whether a switch started; if so, the id its outcome is reported under
    (GET /v1/writes/{id}: done once the new replicas serve, failed when they did not
    start and the served version was deployed again)."""

    reloading: bool
    version: str | None = None
    to: str | None = None
    from_: str | None = Field(default=None, alias="from")
    write_id: str | None = None
    status_url: str | None = None


class IndexInfo(BaseModel):
    """One served collection."""

    name: str
    model: str | None
    text_model: bool
    dim: int
    metric: str
    ntotal: int
    shards: int
    factory: str
    compressed: bool = Field(description="RAM holds compressed codes, rescored from disk")
    store_vectors: Literal["float32", "float16", "int8"] | None = Field(
        description="the precision of the vectors kept on disk (None: an index built "
        "before vector files, whose docs tables hold float32 vectors)"
    )
    search_params: dict[str, int] = Field(description="nprobe / efSearch / rescore, as tuned")
    recall_at_10: float | None
    created_at: str
    version: str
    metadata_columns: list[str]
    lexical: str | None = Field(
        default=None, description="the lexical part's analysis language (None: dense only)"
    )
    modes: list[Literal["dense", "lexical", "hybrid"]]
    chunked: bool = Field(description="documents are split in passages (chunks)")
    modality: Literal["text", "image"] = Field(
        default="text", description="what the indexed vectors were made from"
    )
    image_queries: bool = Field(
        default=False, description='the model has an image tower: {"image": base64} queries'
    )


class IndexesResponse(BaseModel):
    indexes: list[IndexInfo]


class CollectionsResponse(BaseModel):
    collections: list[IndexInfo] = Field(description="the default collection first")
    default: str


class Status(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
