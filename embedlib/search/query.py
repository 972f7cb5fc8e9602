"""What can be asked of an index: a `Query`, and the `Hit`s that answer it.

A query is one of: `text` (embedded with the index's own model), `vector`, or
`positive` / `negative` items (vector arithmetic as gensim's `most_similar`: document
ids, `TextItem`s or vectors). The same value comes from the library (`ShardedIndex`) and
from an HTTP request, and one `Searcher` answers it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from embedlib.exceptions import QueryError

Include = Literal["text", "metadata", "vector"]
INCLUDE_FIELDS: frozenset[str] = frozenset(get_args(Include))
DEFAULT_INCLUDE: tuple[Include, ...] = ("text", "metadata")
Group = Literal["document", "chunk"]
Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[str, ...] = get_args(Mode)
MAX_PASSAGES = 20
RRF_K = 60  # reciprocal-rank fusion's constant, as Qdrant, LanceDB and Elasticsearch use
Fusion = Literal["relative", "rrf", "minmax"]
FUSIONS: tuple[str, ...] = get_args(Fusion)
ALPHA = 0.5  # relative and min-max fusion: the dense side's weight (equal weights)
MAX_EF_SEARCH = 4096  # HNSW search breadth: FAISS allocates per query and step


@dataclass(frozen=True)
class TextItem:
    """Text to embed, as an item of vector arithmetic (a plain string is a document id)."""

    text: str


# a document id, text to embed, or a vector (taken as given, then made unit length)
ArithmeticItem = str | TextItem | Sequence[float] | np.ndarray


@dataclass(frozen=True, kw_only=True, eq=False)
class SearchOptions:
    """How to search, whatever the query: the `k` best hits with the `include`d fields,
    among the documents matching `filter`, `exclude`d ids left out; `nprobe` /
    `ef_search` override the index's tuned search parameters.

    In an index of chunked documents the hits are documents, each scored by its best
    chunk and carrying it as its passage, with up to `passages` passages; `group`
    "chunk" answers with the chunks themselves.

    `mode` (text queries): "dense" ranks by the vectors, "lexical" by BM25, "hybrid"
    fuses both rankings (`fusion.py`): "relative" (the default) weighs the cosine
    similarity and the BM25 score relative to the best the query could score, alpha *
    dense + (1 - alpha) * lexical; "rrf" by reciprocal rank (`rrf_k`); "minmax" by each
    list's min-max normalized scores. None is hybrid when the index has a lexical part,
    else dense. `explain` adds each hit's dense and lexical rank and score."""

    k: int = 10
    nprobe: int | None = None
    ef_search: int | None = None
    filter: Mapping[str, Any] | None = None
    include: Sequence[str] = DEFAULT_INCLUDE
    exclude: Sequence[str] = ()
    passages: int = 1
    group: Group = "document"
    mode: Mode | None = None
    fusion: Fusion = "relative"
    rrf_k: float = RRF_K
    alpha: float = ALPHA
    explain: bool = False
    fields: frozenset[str] = field(init=False, repr=False)  # `include` as a set

    def __post_init__(self) -> None:
        if self.k < 1:
            raise QueryError(f"k must be at least 1, got {self.k}")
        if not 1 <= self.passages <= MAX_PASSAGES:
            raise QueryError(f"passages must be between 1 and {MAX_PASSAGES}, got {self.passages}")
        if self.group not in ("document", "chunk"):
            raise QueryError(f"group must be document or chunk, got {self.group!r}")
        if self.mode is not None and self.mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.rrf_k > 0:
            raise QueryError(f"rrf_k must be positive, got {self.rrf_k}")
        if self.fusion not in FUSIONS:
            raise QueryError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if not 0 <= self.alpha <= 1:
            raise QueryError(f"alpha must be between 0 and 1, got {self.alpha}")
        for name in ("nprobe", "ef_search"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise QueryError(f"{name} must be at least 1, got {value}")
        if self.ef_search is not None and self.ef_search > MAX_EF_SEARCH:
            raise QueryError(f"ef_search is at most {MAX_EF_SEARCH}, got {self.ef_search}")
        fields_ = frozenset(self.include)
        if not fields_ <= INCLUDE_FIELDS:
            bad = ", ".join(sorted(fields_ - INCLUDE_FIELDS))
            raise QueryError(f"include takes {', '.join(sorted(INCLUDE_FIELDS))}; not {bad}")
        object.__setattr__(self, "fields", fields_)


@dataclass(frozen=True, kw_only=True, eq=False)
class Query(SearchOptions):
    """One search: `text`, `vector`, or `positive`/`negative` items, with the options
    of `SearchOptions`."""

    text: str | None = None
    vector: Sequence[float] | np.ndarray | None = None
    positive: Sequence[ArithmeticItem] = ()
    negative: Sequence[ArithmeticItem] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        kinds = (
            (self.text is not None)
            + (self.vector is not None)
            + bool(self.positive or self.negative)
        )
        if kinds != 1:
            raise QueryError("give exactly one of: text, a vector, or positive/negative items")
        if self.text is not None and not self.text.strip():
            raise QueryError("the query text is empty")

    def texts(self) -> list[str]:
        """The texts this query needs embedded, in the order the searcher uses them."""
        if self.text is not None:
            return [self.text]
        return [i.text for i in (*self.positive, *self.negative) if isinstance(i, TextItem)]


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk of a document: its text, `document_text[start:end]`, and its number."""

    text: str | None
    start: int
    end: int
    chunk: int


@dataclass(slots=True)
class Hit:
    """One result: the document's id and score (similarity for cosine and dot, higher
    first; squared L2 distance for l2, lower first), with the fields asked for."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: list[float] | None = None
    passage: Passage | None = None  # chunked indexes: the chunk that matched
    passages: list[Passage] = field(default_factory=list)  # with `passages` > 1
    explain: dict[str, Any] | None = None  # with `explain`: {"dense"|"lexical": {rank, score}}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Hit:
        """A hit from a result row ({"id", "score", ...} as the HTTP API answers)."""
        return cls(
            id=row["id"],
            score=float(row["score"]),
            text=row.get("text"),
            metadata=row.get("metadata") or {},
            vector=row.get("vector"),
            passage=Passage(**row["passage"]) if "passage" in row else None,
            passages=[Passage(**p) for p in row.get("passages", ())],
            explain=row.get("explain"),
        )
