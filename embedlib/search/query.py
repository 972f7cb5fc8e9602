"""The search contract, defined once: what can be asked of an index and what answers it.

A `Query` is one of: text (`text`, sent over HTTP as `query`: embedded with the index's
own model), an `image` (its file's bytes, base64 over HTTP: embedded with the image tower
of a CLIP-style index model), a `vector`, or `positive` / `negative` items (vector arithmetic as gensim's
`most_similar`: document ids, `TextItem`s or vectors), with the `SearchOptions` every
search takes. A `VectorBatch` is many vectors sharing one set of options. Each answer is
a list of `Hit`s, best first.

The library (`ShardedIndex`), the `Searcher`, the HTTP API's bodies and its OpenAPI
document, the `Client` and the CLI all use these classes, so a field, its default and
its bounds are written here only. pydantic validates them: a library caller gets a
`QueryError` naming what is wrong, an HTTP client a 422 with the same words.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import TypedDict

from embedlib.exceptions import QueryError
from embedlib.options import Mode
from embedlib.search.filters import condition_values

Include = Literal["text", "metadata", "vector", "thumbnail", "image"]
INCLUDE_FIELDS: frozenset[str] = frozenset(get_args(Include))
DEFAULT_INCLUDE: tuple[Include, ...] = ("text", "metadata")
Group = Literal["document", "chunk"]
FusionName = Literal["relative", "rrf", "minmax"]
RRF_K = 60  # reciprocal-rank fusion's constant, as Qdrant, LanceDB and Elasticsearch use
ALPHA = 0.5  # relative and min-max fusion: the dense side's weight (equal weights)

# What one query may ask (a request over the cap is a 422 naming the cap and the value;
# README "Limits"). nprobe is clamped to the index's list count.
MAX_K = 1000
MAX_PASSAGES = 20
MAX_EF_SEARCH = 4096  # HNSW search breadth: FAISS allocates per query and step
MAX_RESCORE = 64  # candidates per hit rescored (at most MAX_CANDIDATES per shard in all)
MAX_ITEMS = 1000  # positive + negative items of one query
MAX_TEXT_ITEMS = 64  # of them, texts to embed
MAX_QUERY_TEXT_CHARS = 100_000  # the texts one query embeds, together
MAX_EXCLUDE = 10_000  # ids one query leaves out
MAX_FILTER_VALUES = 10_000  # values in one filter, all its conditions together
MAX_QUERY_CHARS = 20_000  # one query text (the model reads its first 256 tokens)
MAX_QUERY_IMAGE_BYTES = 8 * 1024 * 1024  # one query image file
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a larger value is infinite as float32
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# a vector's values as JSON Schema states them: numbers that float32 holds
VECTOR_ITEM: dict[str, Any] = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's errors as one line: "where: what" for the first five."""
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "__root__"))
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


class _Contract(BaseModel):
    """A validated value of the contract; constructed in Python, a bad field raises
    `QueryError` (over HTTP, FastAPI validates the same model and answers 422)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise QueryError(validation_message(e.errors())) from None


def _as_vector(value: Any) -> np.ndarray:
    """A vector given as a list of numbers or an array: float32, one dimension, finite."""
    try:
        given = np.asarray(value)
    except (TypeError, ValueError):
        raise ValueError("a vector is a list of numbers") from None
    if given.dtype.kind not in "iuf" and given.size:  # not strings, booleans or objects
        raise ValueError("a vector is a list of numbers")
    with np.errstate(over="ignore"):  # a value float32 cannot hold is refused below
        x = given.astype(np.float32)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("a vector is a non-empty list of numbers")
    if not np.isfinite(x).all():
        raise ValueError("a vector holds NaN or infinite values")
    return x


Vector = Annotated[
    np.ndarray,
    PlainValidator(_as_vector),
    PlainSerializer(lambda x: x.tolist(), return_type=list[float]),
    WithJsonSchema({"type": "array", "items": VECTOR_ITEM, "minItems": 1}),
]


def _as_image(value: Any) -> bytes:
    """An image file's bytes, given as bytes or (over HTTP) as a base64 string."""
    if isinstance(value, str):
        if len(value) > (MAX_QUERY_IMAGE_BYTES + 2) // 3 * 4 + 4:
            raise ValueError(f"the image is over the cap of {MAX_QUERY_IMAGE_BYTES} bytes")
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("an image is the file's bytes as a base64 string") from None
    if not isinstance(value, bytes | bytearray) or not value:
        raise ValueError("an image is the file's bytes as a base64 string")
    if len(value) > MAX_QUERY_IMAGE_BYTES:
        raise ValueError(f"the image is over the cap of {MAX_QUERY_IMAGE_BYTES} bytes")
    return bytes(value)


ImageBytes = Annotated[
    bytes,
    PlainValidator(_as_image),
    PlainSerializer(lambda x: base64.b64encode(x).decode(), return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "pattern": BASE64_PATTERN,
            "minLength": 4,
            "description": "an image file (JPEG, PNG, WebP, GIF), base64",
        }
    ),
]


class TextItem(_Contract):
    """Text to embed, as an item of vector arithmetic (a plain string is a document id)."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)

    def __init__(self, text: str | None = None, /, **data: Any) -> None:
        super().__init__(**({"text": text} if text is not None else {}), **data)


class VectorItem(_Contract):
    """A vector, as an item of vector arithmetic (taken as given, then made unit length)."""

    vector: Vector


def _item(value: Any) -> Any:
    """Items as the library gives them: a bare vector (array or list of numbers) is a
    `VectorItem`."""
    if isinstance(value, np.ndarray) or (
        isinstance(value, list | tuple) and value and not isinstance(value[0], str | dict)
    ):
        return VectorItem(vector=np.asarray(value))
    return value


ArithmeticItem = Annotated[
    str | TextItem | VectorItem,
    BeforeValidator(_item),
    Field(description='a document id, {"text": ...} to embed, or {"vector": [...]}'),
]
FILTER_SCALAR: dict[str, Any] = {"type": ["string", "number", "boolean"]}


def filter_condition(scalar: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of one filter condition on a column of values like `scalar`: the
    value itself, or {"in": [values]}."""
    listed = {"type": "object", "properties": {"in": {"type": "array", "items": scalar}},
              "required": ["in"], "additionalProperties": False}  # fmt: skip
    return {"anyOf": [scalar, listed]}


def _check_filter_shape(value: Any) -> Any:
    """A filter is {column: value or {"in": [values]}}; values are strings, numbers or
    booleans (whether the column exists and takes them is checked against the index)."""
    if not isinstance(value, dict):
        raise ValueError('a filter is an object: {"column": value or {"in": [values]}}')
    for column, cond in value.items():
        condition_values(column, cond)
    return value


Filter = Annotated[
    dict[str, Any],
    BeforeValidator(_check_filter_shape),
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": filter_condition(FILTER_SCALAR),
            "description": "metadata conditions, all of which must hold: "
            '{"lang": "en", "year": {"in": [2020, 2021]}}',
            "examples": [{"lang": "en"}],
        }
    ),
]


class SearchOptions(_Contract):
    """How to search, whatever the query: the `k` best hits with the `include`d fields,
    among the documents matching `filter`, `exclude`d ids left out; `nprobe` /
    `ef_search` / `rescore` override the index's tuned search parameters.

    In an index of chunked documents the hits are documents, each scored by its best
    chunk and carrying it as its passage, with up to `passages` passages; `group`
    "chunk" answers with the chunks themselves.

    `mode` (text queries): "dense" ranks by the vectors, "lexical" by BM25, "hybrid"
    fuses both rankings with the `fusion` named (`fusion.py`). None is hybrid when the
    index has a lexical part, else dense. `explain` adds each hit's dense and lexical
    rank and score."""

    k: int = Field(default=10, ge=1, le=MAX_K, description="how many hits")
    nprobe: int | None = Field(
        default=None, ge=1, description="IVF lists probed (clamped to the index's list count)"
    )
    ef_search: int | None = Field(
        default=None, ge=1, le=MAX_EF_SEARCH, description="HNSW search breadth"
    )
    rescore: int | None = Field(
        default=None, ge=0, le=MAX_RESCORE,
        description="compressed indexes: candidates per hit rescored exactly from the stored vectors (0: none)",
    )  # fmt: skip
    filter: Filter | None = None
    include: list[Include] = Field(
        default_factory=lambda: list(DEFAULT_INCLUDE), description="fields of each hit"
    )
    exclude: list[str] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDE,
        description="document ids to leave out (ids the index does not hold are ignored)",
    )
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
    fusion: FusionName = Field(
        default="relative",
        description="hybrid: relative (alpha * cosine + (1 - alpha) * BM25 / the query's "
        "attainable BM25), rrf (reciprocal rank, rrf_k) or minmax (min-max normalized scores)",
    )
    rrf_k: float = Field(
        default=RRF_K, gt=0, allow_inf_nan=False, description="hybrid, rrf: fusion's k"
    )
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

    @property
    def fields(self) -> frozenset[str]:
        """`include` as a set."""
        return frozenset(self.include)

    @property
    def work(self) -> int:
        """What one query of these options may walk: (k + excluded ids) x passages."""
        return (self.k + len(self.exclude)) * self.passages


def _drop_empty_items(data: Any) -> Any:
    """`positive: []` or `negative: []` say nothing: as if not given."""
    if isinstance(data, dict):
        empty = [k for k in ("positive", "negative") if isinstance(data.get(k), list | tuple)
                 and not data[k]]  # fmt: skip
        if empty:
            return {k: v for k, v in data.items() if k not in empty}
    return data


# the JSON schema states the rules `_one_kind` and `Searcher.mode` enforce: exactly one
# kind of query (a field sent as null is not given), and only text is ranked lexically
DENSE_ONLY: dict[str, Any] = {"enum": ["dense", None]}
ONE_KIND: dict[str, Any] = {
    "oneOf": [
        {"required": ["query"], "properties": {"query": {"type": "string"}}},
        {"required": ["vector"], "properties": {"vector": {"type": "array"}, "mode": DENSE_ONLY}},
        {"required": ["image"], "properties": {"image": {"type": "string"}, "mode": DENSE_ONLY}},
        {  # an empty list says nothing: as if not given
            "anyOf": [
                {"required": [side], "properties": {side: {"type": "array", "minItems": 1}}}
                for side in ("positive", "negative")
            ],
            "properties": {"mode": DENSE_ONLY},
        },
    ]
}


class Query(SearchOptions):
    """One search: `text` (over HTTP `query`), `vector`, or `positive`/`negative` items,
    with the options of `SearchOptions`."""

    model_config = ConfigDict(
        json_schema_extra={**ONE_KIND, "examples": [{"query": "machine learning tutorial"}]}
    )

    text: str | None = Field(
        default=None,
        alias="query",
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="text, embedded with the index's model",
        json_schema_extra={"pattern": r"\S"},  # not blank (`_not_blank`)
    )
    vector: Vector | None = None
    image: ImageBytes | None = Field(
        default=None, description="an image, embedded with the index model's image tower"
    )
    positive: list[ArithmeticItem] = Field(default_factory=list, max_length=MAX_ITEMS)
    negative: list[ArithmeticItem] = Field(default_factory=list, max_length=MAX_ITEMS)

    _empty_items = model_validator(mode="before")(_drop_empty_items)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("the query text is empty")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> Query:
        kinds = (
            (self.text is not None)
            + (self.vector is not None)
            + (self.image is not None)
            + bool(self.positive or self.negative)
        )
        if kinds != 1:
            raise ValueError(
                "give exactly one of: text (query), an image, a vector, or positive/negative"
            )
        if self.mode not in (None, "dense") and self.text is None:
            raise ValueError(
                f"mode {self.mode} needs a text query; vectors, images and vector arithmetic "
                "are searched by their vectors (mode dense)"
            )
        if len(self.positive) + len(self.negative) > MAX_ITEMS:
            raise ValueError(f"at most {MAX_ITEMS} positive and negative items together")
        texts = self.texts()
        if len(texts) > MAX_TEXT_ITEMS + (self.text is not None):
            raise ValueError(
                f"at most {MAX_TEXT_ITEMS} text items (each is embedded); got {len(texts)}"
            )
        chars = sum(map(len, texts))
        if chars > MAX_QUERY_TEXT_CHARS:
            raise ValueError(
                f"the texts of one query hold {chars} characters; the cap is {MAX_QUERY_TEXT_CHARS}"
            )
        return self

    def texts(self) -> list[str]:
        """The texts this query needs embedded, in the order the searcher uses them."""
        if self.text is not None:
            return [self.text]
        return [i.text for i in (*self.positive, *self.negative) if isinstance(i, TextItem)]


class VectorBatch(SearchOptions):
    """Many query vectors sharing one set of options: over HTTP, `vectors` as rows of
    floats, or with `encoding_format` "base64" one base64 string of little-endian float32
    values, row after row (as the OpenAI embeddings API returns them). Its hits carry
    only id and score unless `include` asks for more."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [  # the rule `_format_matches` enforces
                {
                    "properties": {
                        "vectors": {"type": "array"},
                        "encoding_format": {"const": "float"},
                    }
                },
                {
                    "required": ["encoding_format"],
                    "properties": {
                        "vectors": {"type": "string"},
                        "encoding_format": {"const": "base64"},
                    },
                },
            ]
        }
    )

    vectors: (
        Annotated[str, Field(min_length=1, pattern=BASE64_PATTERN)]
        | Annotated[
            list[list[Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]]],
            Field(min_length=1),
        ]
    )
    encoding_format: Literal["float", "base64"] = "float"
    include: list[Include] = Field(default_factory=list, description="fields of each hit")
    mode: Literal["dense"] | None = Field(default=None, description="vectors are ranked densely")

    @model_validator(mode="after")
    def _format_matches(self) -> VectorBatch:
        if (self.encoding_format == "base64") != isinstance(self.vectors, str):
            raise ValueError(
                'encoding_format "base64" takes one base64 string of float32 values; '
                '"float" (the default) takes a list of vectors'
            )
        return self


# -- answers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk of a document: its text, `document_text[start:end]`, and its number."""

    text: Annotated[str | None, Field(description="the chunk's text: document_text[start:end]")]
    start: int
    end: int
    chunk: int


class Ranked(TypedDict):
    """Where a hit stood in one ranking of a hybrid search."""

    rank: Annotated[int, Field(description="1 = first in that ranking")]
    score: float


@dataclass(slots=True)
class Hit:
    """One result: the document's id and score (similarity for cosine and dot, higher
    first; squared L2 distance for l2, lower first), with the fields asked for."""

    id: str
    score: Annotated[float, Field(description="similarity (cosine, dot: higher first) or squared L2")]  # fmt: skip
    text: Annotated[str | None, Field(description="the text of the row that matched")] = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None
    passage: Annotated[
        Passage | None, Field(description="chunked documents: the chunk that matched")
    ] = None
    passages: Annotated[
        list[Passage] | None, Field(description="with `passages` > 1: the best chunks")
    ] = None
    explain: Annotated[
        dict[str, Ranked | None] | None,
        Field(description='with `explain`: {"dense", "lexical"}: where the hit ranked'),
    ] = None
    thumbnail: Annotated[
        str | None, Field(description="image indexes: a small JPEG of the image, base64")
    ] = None
    image: Annotated[
        str | None, Field(description='image indexes, with include "image": the file, base64')
    ] = None

    def to_json(self) -> dict[str, Any]:
        """The hit as the HTTP API answers it: the fields it holds, none that it lacks."""
        out: dict[str, Any] = {"id": self.id, "score": self.score}
        if self.text is not None:
            out["text"] = self.text
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.vector is not None:
            out["vector"] = self.vector
        if self.passage is not None:
            out["passage"] = _passage_json(self.passage)
        if self.passages is not None:
            out["passages"] = [_passage_json(p) for p in self.passages]
        if self.explain is not None:
            out["explain"] = self.explain
        if self.thumbnail is not None:
            out["thumbnail"] = self.thumbnail
        if self.image is not None:
            out["image"] = self.image
        return out

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Hit:
        """A hit from the HTTP API's answer."""
        passage = row.get("passage")
        passages = row.get("passages")
        return cls(
            id=row["id"],
            score=float(row["score"]),
            text=row.get("text"),
            metadata=row.get("metadata"),
            vector=row.get("vector"),
            passage=Passage(**passage) if passage else None,
            passages=[Passage(**p) for p in passages] if passages is not None else None,
            explain=row.get("explain"),
            thumbnail=row.get("thumbnail"),
            image=row.get("image"),
        )


def _passage_json(p: Passage) -> dict[str, Any]:
    return {"text": p.text, "start": p.start, "end": p.end, "chunk": p.chunk}


def hits_json(rows: Sequence[Sequence[Hit]]) -> list[list[dict[str, Any]]]:
    """Each query's hits as the HTTP API answers them."""
    return [[h.to_json() for h in hits] for hits in rows]


__all__ = [
    "ALPHA",
    "DEFAULT_INCLUDE",
    "RRF_K",
    "ArithmeticItem",
    "FusionName",
    "Group",
    "Hit",
    "Include",
    "Mode",
    "Passage",
    "Query",
    "Ranked",
    "SearchOptions",
    "TextItem",
    "Vector",
    "VectorBatch",
    "VectorItem",
]
