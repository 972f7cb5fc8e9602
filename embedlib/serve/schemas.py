"""Request and response bodies of the HTTP API. FastAPI validates requests against them
(422 on failure) and /openapi.json declares them, so /docs can send real requests and
clients can be generated from the schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from embedlib.exceptions import QueryError
from embedlib.search.query import (
    ALPHA,
    DEFAULT_INCLUDE,
    MAX_EF_SEARCH,
    MAX_PASSAGES,
    RRF_K,
    Fusion,
    Group,
    Include,
    Mode,
    Query,
    SearchOptions,
    TextItem,
)

# What one request may cost (each over-the-cap request is a 422 naming the cap and the
# value sent; README "Limits"). nprobe is clamped to the index's list count.
MAX_K = 1000
MAX_BATCH_QUERIES = 1000
MAX_BATCH_VECTORS = 10_000
MAX_HITS = 100_000  # hits one request asks for: queries (or vectors) x k
MAX_VECTOR_HITS = 10_000  # hits with `include: ["vector"]`, per request
MAX_ITEMS = 1000  # positive + negative items of one query
MAX_FILTER_VALUES = 10_000  # values in one filter, all its conditions together
MAX_QUERY_CHARS = 20_000  # one query text (the model reads its first 256 tokens)
MAX_EMBED_CHARS = 2_000_000  # the texts of one /v1/embeddings request, together


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


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]  # checked in pydantic-core
Filter = Annotated[
    dict[str, Any],
    Field(
        description='metadata conditions, all of which must hold: {"lang": "en", '
        '"year": {"in": [2020, 2021]}}',
        examples=[{"lang": "en"}],
    ),
]


class VectorItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector: list[FiniteFloat] = Field(min_length=1)


class TextArithmeticItem(BaseModel):
    model_config = ConfigDict(extra="forbid", title="TextItem")
    text: str = Field(min_length=1)


ArithmeticItem = Annotated[
    str | TextArithmeticItem | VectorItem,
    Field(description="a document id, {'text': ...} to embed, or {'vector': [...]}"),
]


class SearchFields(BaseModel):
    """How to search, whatever the query."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=10, ge=1, le=MAX_K, description="how many hits")
    nprobe: int | None = Field(
        default=None, ge=1, description="IVF lists probed (clamped to the index's list count)"
    )
    ef_search: int | None = Field(
        default=None, ge=1, le=MAX_EF_SEARCH, description="HNSW search breadth"
    )
    filter: Filter | None = None
    include: list[Include] = Field(
        default_factory=lambda: list(DEFAULT_INCLUDE), description="fields of each hit"
    )
    exclude: list[str] = Field(default_factory=list, description="document ids to leave out")
    passages: int = Field(
        default=1, ge=1, le=MAX_PASSAGES,
        description="chunked documents: the best passages per document (`passages` in hits)",
    )  # fmt: skip
    group: Group = Field(
        default="document",
        description='chunked documents: hits are documents by their best chunk, or "chunk"',
    )
    mode: Mode | None = Field(
        default=None,
        description="text queries: rank by the vectors (dense), by BM25 (lexical), or both "
        "fused (hybrid); default hybrid when the index has a lexical part, else dense",
    )
    fusion: Fusion = Field(
        default="relative",
        description="hybrid: relative (alpha * cosine + (1 - alpha) * BM25 / the query's "
        "attainable BM25), rrf (reciprocal rank, rrf_k) or minmax (min-max normalized scores)",
    )
    rrf_k: float = Field(default=RRF_K, gt=0, description="hybrid, rrf: reciprocal-rank fusion's k")
    alpha: float = Field(
        default=ALPHA, ge=0, le=1, description="hybrid, relative or minmax: the dense weight"
    )
    explain: bool = Field(
        default=False, description="each hit's dense and lexical rank and score (`explain`)"
    )

    @field_validator("filter")
    @classmethod
    def _filter_size(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        values = sum(
            len(c["in"]) if isinstance(c, dict) and isinstance(c.get("in"), list) else 1
            for c in (v or {}).values()
        )
        if values > MAX_FILTER_VALUES:
            raise ValueError(f"the filter holds {values} values; the cap is {MAX_FILTER_VALUES}")
        return v

    def options(self) -> dict[str, Any]:
        return {
            "k": self.k, "nprobe": self.nprobe, "ef_search": self.ef_search,
            "filter": self.filter, "include": self.include, "exclude": self.exclude,
            "passages": self.passages, "group": self.group, "mode": self.mode,
            "fusion": self.fusion, "rrf_k": self.rrf_k, "alpha": self.alpha,
            "explain": self.explain,
        }  # fmt: skip


class SearchRequest(SearchFields):
    """One query: `query` (text), `vector`, or `positive`/`negative` (vector arithmetic)."""

    query: str | None = Field(
        default=None,
        max_length=MAX_QUERY_CHARS,
        description="text, embedded with the index's model",
    )
    vector: list[FiniteFloat] | None = Field(default=None, min_length=1)
    positive: list[ArithmeticItem] = Field(default_factory=list, max_length=MAX_ITEMS)
    negative: list[ArithmeticItem] = Field(default_factory=list, max_length=MAX_ITEMS)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "machine learning tutorial", "k": 5}]},
    )

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
        if len(self.positive) + len(self.negative) > MAX_ITEMS:
            raise ValueError(f"at most {MAX_ITEMS} positive and negative items together")
        check_hits([(1, self.k, "vector" in self.include)])
        return self

    def to_query(self) -> Query:
        return Query(
            text=self.query,
            vector=self.vector,
            positive=[_item(i) for i in self.positive],
            negative=[_item(i) for i in self.negative],
            **self.options(),
        )


def _item(item: str | TextArithmeticItem | VectorItem) -> Any:
    if isinstance(item, str):
        return item
    if isinstance(item, TextArithmeticItem):
        return TextItem(item.text)
    return np.asarray(item.vector, dtype=np.float32)


class BatchSearchRequest(BaseModel):
    """Several searches, each with its own parameters."""

    model_config = ConfigDict(extra="forbid")
    queries: list[SearchRequest] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)

    @model_validator(mode="after")
    def _hits(self) -> BatchSearchRequest:
        check_hits([(1, q.k, "vector" in q.include) for q in self.queries])
        return self


class VectorBatchRequest(SearchFields):
    """Many query vectors sharing one set of parameters: `vectors` as rows of floats, or
    with `encoding_format` "base64" one base64 string of little-endian float32 values,
    row after row (as the OpenAI embeddings API returns them): no JSON numbers to parse."""

    vectors: str | list[list[FiniteFloat]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    include: list[Include] = Field(default_factory=list, description="fields of each hit")

    @model_validator(mode="after")
    def _format_matches(self) -> VectorBatchRequest:
        if (self.encoding_format == "base64") != isinstance(self.vectors, str):
            raise ValueError(
                'encoding_format "base64" takes one base64 string of float32 values; '
                '"float" (the default) takes a list of vectors'
            )
        if isinstance(self.vectors, list):
            if len(self.vectors) > MAX_BATCH_VECTORS:
                raise ValueError(f"at most {MAX_BATCH_VECTORS} vectors per request")
            check_hits([(len(self.vectors), self.k, "vector" in self.include)])
        return self  # base64: the gateway counts the rows once it knows the dimension

    def search_options(self) -> SearchOptions:
        return SearchOptions(**self.options())


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


# -- responses ---------------------------------------------------------------------------


class Passage(BaseModel):
    text: str | None = Field(description="the chunk's text: document_text[start:end]")
    start: int
    end: int
    chunk: int


class Ranked(BaseModel):
    rank: int = Field(description="1 = first in that ranking")
    score: float


class Hit(BaseModel):
    id: str
    score: float = Field(description="similarity (cosine, dot: higher first) or squared L2")
    text: str | None = Field(default=None, description="the text of the row that matched")
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None
    passage: Passage | None = Field(default=None, description="chunked documents: the match")
    passages: list[Passage] | None = None
    explain: dict[str, Ranked | None] | None = Field(
        default=None, description='with `explain`: {"dense", "lexical"}: where the hit ranked'
    )


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
    forward: an older version than the one served is not deployed)."""

    write_id: str
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
    error: WriteError | None = None


class ReloadRequest(BaseModel):
    """Which version to serve: the one named (a rollback, or a version published by
    hand), else the one CURRENT names now."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, pattern=r"^v-\d{5,}$", examples=["v-00002"])


class ReloadResponse(BaseModel):
    reloading: bool
    version: str | None = None
    to: str | None = None
    from_: str | None = Field(default=None, alias="from")


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
    search_params: dict[str, int]
    recall_at_10: float | None
    created_at: str
    version: str
    metadata_columns: list[str]
    lexical: str | None = Field(
        default=None, description="the lexical part's analysis language (None: dense only)"
    )
    modes: list[Literal["dense", "lexical", "hybrid"]]
    chunked: bool = Field(description="documents are split in passages (chunks)")


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
