"""`ShardedIndex`: a published index version searched in this process.

A facade over the one query path: the version's shards (`ShardSet`), its docs tables
(`DocsLookup`), the `Searcher` that answers `Query` values, and the index's own model for
query text, loaded on first use. The HTTP gateway's default placement holds one, so the
library and the HTTP API answer alike. Results carry the string id, the score
(similarity for cosine/dot, higher first; squared L2 distance for l2, lower first), and
on request the text, metadata and vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from embedlib.cache import FileCache
from embedlib.exceptions import NoTextModelError
from embedlib.index.store.version import IndexManifest, IndexVersion, SearchParams
from embedlib.models.encoders import QueryModels, TextEncoder, encode_image_files
from embedlib.models.fingerprint import ModelFingerprint
from embedlib.search.query import (
    Hit,
    Query,
    SearchOptions,
)
from embedlib.search.searcher import Answers, Searcher, Task, TaskResult, prepare_queries
from embedlib.search.shards import SearchTask, ShardSet


def require_text_model(manifest: IndexManifest) -> ModelFingerprint:
    """The index's model, when query text can be embedded with it."""
    if manifest.model is None or not manifest.text_model:
        raise NoTextModelError(
            "this index was built from vectors without a text model; query it with vectors "
            "or ids, not text"
        )
    return manifest.model


class ShardedIndex:
    """A published index version: open with the index root (follows CURRENT, or the
    `version` named) or a version folder, on any fsspec URL."""

    def __init__(
        self,
        path: str,
        *,
        version: str | None = None,
        storage_options: dict[str, Any] | None = None,
        cache: FileCache | None = None,
        query_models: QueryModels | None = None,
    ) -> None:
        self.version = IndexVersion(
            path, version=version, storage_options=storage_options, cache=cache
        )
        self.searcher = Searcher.open(self.version)
        self.docs = self.searcher.docs
        self.shards = ShardSet.open(self.version, docs=self.docs.shards)
        # shared by indexes of one model: one model per fingerprint
        self._models = query_models if query_models is not None else QueryModels()

    @property
    def manifest(self) -> IndexManifest:
        return self.version.manifest

    @property
    def metric(self) -> str:
        return self.manifest.metric

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def ntotal(self) -> int:
        return int(sum(s.index.ntotal for s in self.shards.shards))

    @property
    def fingerprint(self) -> ModelFingerprint | None:
        return self.manifest.model

    @property
    def default_params(self) -> SearchParams:
        return self.manifest.search_params

    # -- the query path -------------------------------------------------------------------

    def answer(self, queries: Sequence[Query]) -> Answers:
        """The hits of each query and where the time went."""
        return self.searcher.run(queries, _InProcess(self))

    def query(self, queries: Sequence[Query]) -> list[list[Hit]]:
        """The hits of each query, best first."""
        return self.answer(queries).hits

    def search(self, vectors: np.ndarray, k: int = 10, **options: Any) -> list[list[Hit]]:
        """Top-k hits for each query vector (rows of `vectors`), in one search, with the
        `SearchOptions` given as keywords: `filter` (as over HTTP: {"lang": "en", "year":
        {"in": [2020, 2021]}}) selects documents, `exclude` leaves ids out, `include`
        the fields of each hit (text and metadata by default), `passages` and `group` for
        chunked documents."""
        batch = SearchOptions(k=k, **options)
        return self.searcher.run_batch(np.atleast_2d(vectors), batch, _InProcess(self)).hits

    def search_text(self, texts: Sequence[str], k: int = 10, **options: Any) -> list[list[Hit]]:
        """Top-k hits for each text, embedded with the index's own model."""
        return self.query([Query(text=t, k=k, **options) for t in texts])

    def most_similar(
        self,
        positive: Sequence[Any] = (),
        negative: Sequence[Any] = (),
        k: int = 10,
        **options: Any,
    ) -> list[Hit]:
        """Vector arithmetic as gensim's `most_similar`: the mean of the unit-length
        positive items minus the negative ones (document ids, `TextItem`s or vectors);
        items given by id are left out of the results."""
        query = Query(positive=list(positive), negative=list(negative), k=k, **options)
        return self.query([query])[0]

    def query_model(self) -> TextEncoder:
        """The index's own model, for query text (loaded on first use, checked against
        the index's fingerprint)."""
        return self._models.get(require_text_model(self.manifest))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors for `texts`, made with the index's own model."""
        return self.query_model().encode(list(texts))[0]

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Query vectors for image files (their bytes), made with the image tower of the
        index's own (CLIP-style) model."""
        return encode_image_files(self.query_model(), list(images))

    def search_images(
        self, images: Sequence[bytes], k: int = 10, **options: Any
    ) -> list[list[Hit]]:
        """Top-k hits for each image file (its bytes): images like it in an image index,
        or texts that describe it in a text index of the same CLIP model."""
        return self.query([Query(image=data, k=k, **options) for data in images])

    def vector(self, doc_id: str) -> np.ndarray:
        """The indexed vector of a document (unit length for cosine; for chunks, their
        mean made unit length)."""
        return self.docs.document_vector(doc_id)

    def prepare_queries(self, vectors: np.ndarray) -> np.ndarray:
        return prepare_queries(vectors, dim=self.dim, metric=self.metric)

    def search_ids(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rescore: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-k (scores, int64 ids), best first, over all shards, by the same shard
        search as every query; queries are used as given (normalize them for cosine, see
        `prepare_queries`)."""
        params = self.default_params.override(nprobe=nprobe, ef_search=ef_search, rescore=rescore)
        x = np.ascontiguousarray(queries, dtype=np.float32)
        return self.shards.search_one(SearchTask(x, k, params))


class _InProcess:
    """A `ShardedIndex` as the searcher's placement: its model, its shards."""

    def __init__(self, index: ShardedIndex) -> None:
        self.index = index

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.index.encode_text(texts)

    def encode_images(self, images: list[bytes]) -> np.ndarray:
        return self.index.encode_images(images)

    def search(self, task: Task) -> TaskResult:
        return self.index.shards.search_one(task)
