"""`ShardedIndex`: open a published index version, search every shard, merge top-k.

IVF shards are memory-mapped (a remote index is first copied to a local cache). Results
carry the string id, the score (similarity for cosine/dot, higher first; squared L2
distance for l2, lower first), and on request the text and metadata from the docs tables.
Vector arithmetic (`positive` / `negative`, as gensim's `most_similar`) is part of search.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.documents import ID, TEXT_HASH, VECTOR
from embedlib.exceptions import EmbedlibError, SourceError
from embedlib.index.faiss_ops import local_copy, read_index_mmap, search_params
from embedlib.index.layout import INDEX_MANIFEST, resolve
from embedlib.models import ModelFingerprint
from embedlib.store import read_json, vectors_of

IID = "_iid"
Query = str | Sequence[float] | np.ndarray


class QueryError(EmbedlibError, ValueError):
    """A query the index cannot answer (unknown id, wrong dimension, no text model)."""


@dataclass
class Hit:
    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: list[float] | None = None


class _Docs:
    """One shard's docs table: the int64 and string ids in memory (Arrow), the other
    columns read by row group on demand."""

    def __init__(self, fs: Any, path: str) -> None:
        self.fs, self.path = fs, path
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            both = pf.read(columns=[IID, ID])
            self.iids = both.column(IID).to_numpy()
            self.ids = both.column(ID).combine_chunks()
            self.group_starts = np.cumsum(
                [0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
            )
            self.columns = pf.schema_arrow.names
        self._cache: dict[int, dict[str, list[Any]]] = {}

    def positions(self, iids: np.ndarray) -> np.ndarray:
        """Row of each int64 id in this table, -1 where it is not here."""
        pos = np.minimum(np.searchsorted(self.iids, iids), max(len(self.iids) - 1, 0))
        if len(self.iids) == 0:
            return np.full(len(iids), -1, np.int64)
        return np.where(self.iids[pos] == iids, pos, -1)

    def rows(self, iids: np.ndarray) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for p in self.positions(iids):
            if p < 0:
                out.append(None)
                continue
            g = int(np.searchsorted(self.group_starts, p, side="right") - 1)
            group = self._group(g)
            r = int(p - self.group_starts[g])
            out.append({c: v[r] for c, v in group.items()})
        return out

    def _group(self, g: int) -> dict[str, list[Any]]:
        if g not in self._cache:
            if len(self._cache) > 64:
                self._cache.pop(next(iter(self._cache)))
            with self.fs.open(self.path, "rb") as fh:
                table = pq.ParquetFile(fh).read_row_group(g)
            cols = {c: table.column(c).to_pylist() for c in table.column_names if c != VECTOR}
            cols[VECTOR] = list(vectors_of(table.column(VECTOR)))
            self._cache[g] = cols
        return self._cache[g]

    def string_ids(self) -> list[str]:
        return self.ids.to_pylist()


class DocsLookup:
    """The docs tables of an index version: int64 id -> row, string id -> int64 id."""

    def __init__(self, fs: Any, version_path: str, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.docs = [_Docs(fs, posixpath.join(version_path, s["docs"])) for s in manifest["shards"]]
        self._id_map: dict[str, int] | None = None

    def iid_of(self, doc_id: str) -> int:
        if self._id_map is None:
            id_map: dict[str, int] = {}
            for docs in self.docs:
                id_map.update(zip(docs.string_ids(), docs.iids.tolist(), strict=True))
            self._id_map = id_map
        if doc_id not in self._id_map:
            raise QueryError(f"id {doc_id!r} is not in the index")
        return self._id_map[doc_id]

    def vector_of_iid(self, iid: int) -> np.ndarray:
        for docs in self.docs:
            row = docs.rows(np.array([iid]))[0]
            if row is not None:
                return np.asarray(row[VECTOR], dtype=np.float32)
        raise QueryError(f"internal id {iid} is not in the index")

    def string_ids(self, iids: np.ndarray) -> list[str]:
        """The string ids of int64 ids, from the ids held in memory (no row reads)."""
        out = np.full(len(iids), None, dtype=object)
        missing = np.ones(len(iids), dtype=bool)
        for docs in self.docs:
            pos = docs.positions(iids)
            found = pos >= 0
            out[found] = docs.ids.take(pos[found]).to_numpy(zero_copy_only=False)
            missing &= ~found
        if missing.any():
            raise SourceError(
                "the docs tables do not hold an id the index returned; the index is damaged"
            )
        return list(out.tolist())

    def hits(self, pairs: Sequence[tuple[float, int]], include: Sequence[str]) -> list[Hit]:
        """Hits for (score, int64 id) pairs, with text / metadata / vector as asked."""
        iids = np.array([i for _, i in pairs], dtype=np.int64)
        if not {"text", "metadata", "vector"} & set(include):
            ids = self.string_ids(iids)
            return [Hit(id=i, score=float(s)) for i, (s, _) in zip(ids, pairs, strict=True)]
        rows: list[dict[str, Any] | None] = [None] * len(pairs)
        for docs in self.docs:
            for n, row in enumerate(docs.rows(iids)):
                if row is not None:
                    rows[n] = row
        text_column = self.manifest.get("text_column")
        hits = []
        for (score, _), row in zip(pairs, rows, strict=True):
            if row is None:
                raise SourceError(
                    "the docs tables do not hold an id the index returned; the index is damaged"
                )
            hit = Hit(id=row[ID], score=float(score))
            if "text" in include and text_column:
                hit.text = row.get(text_column)
            if "metadata" in include:
                hit.metadata = {
                    c: v
                    for c, v in row.items()
                    if c not in (IID, ID, VECTOR, TEXT_HASH, text_column)
                }
            if "vector" in include:
                hit.vector = [float(x) for x in row[VECTOR]]
            hits.append(hit)
        return hits


def prepare_queries(vectors: np.ndarray, *, dim: int, metric: str) -> np.ndarray:
    """Query vectors as the index compares them: float32, unit length for cosine."""
    x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if x.shape[1] != dim:
        raise QueryError(f"query vectors have dimension {x.shape[1]}; the index has {dim}")
    if not np.isfinite(x).all():
        raise QueryError("query vectors hold NaN or infinite values")
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise QueryError("a zero query vector has no direction to compare by cosine")
        x = x / norms
    return x


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """gensim's most_similar arithmetic: the mean of the weighted unit-length inputs."""
    if not vectors:
        raise QueryError("give at least one positive or negative item")
    units = []
    for v, w in zip(vectors, weights, strict=True):
        norm = np.linalg.norm(v)
        units.append(w * (v / norm if norm > 0 else v))
    return np.mean(units, axis=0).astype(np.float32)


def merge_topk(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores, ids) into the overall top-k, best first."""
    d = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    worst = np.inf if metric == "l2" else -np.inf
    d = np.where(i < 0, worst, d)
    key = d if metric == "l2" else -d
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


class ShardedIndex:
    """A published index version: open with the index root (follows CURRENT) or a
    version folder."""

    def __init__(
        self,
        path: str,
        *,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.fs, root = url_to_fs(path, **(storage_options or {}))
        self.path = resolve(self.fs, root.rstrip("/"))
        self.manifest: dict[str, Any] = read_json(
            self.fs, posixpath.join(self.path, INDEX_MANIFEST)
        )
        cache = cache_dir or os.path.join(tempfile.gettempdir(), "embedlib-index-cache")
        self.shards = [
            read_index_mmap(local_copy(self.fs, posixpath.join(self.path, s["file"]), cache))
            for s in self.manifest["shards"]
        ]
        self.lookup = DocsLookup(self.fs, self.path, self.manifest)
        self._encoder: Any = None

    @property
    def metric(self) -> str:
        return str(self.manifest["metric"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def ntotal(self) -> int:
        return int(sum(s.ntotal for s in self.shards))

    @property
    def fingerprint(self) -> ModelFingerprint | None:
        model = self.manifest.get("model")
        return ModelFingerprint.from_dict(model) if model else None

    @property
    def default_params(self) -> dict[str, int]:
        return dict(self.manifest.get("search_params", {}))

    def search_ids(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw search: (scores, int64 ids), best first, over all shards. Queries are used as
        given (normalize them for cosine, see `prepare_queries`)."""
        defaults = self.default_params
        nprobe = nprobe if nprobe is not None else defaults.get("nprobe")
        ef_search = ef_search if ef_search is not None else defaults.get("efSearch")
        x = np.ascontiguousarray(queries, dtype=np.float32)
        parts = [
            s.search(x, k, params=search_params(s, nprobe=nprobe, ef_search=ef_search))
            for s in self.shards
        ]
        return merge_topk(parts, k, self.metric)

    def prepare_queries(self, vectors: np.ndarray) -> np.ndarray:
        return prepare_queries(vectors, dim=self.dim, metric=self.metric)

    def search(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        include: Sequence[str] = ("text", "metadata"),
        exclude: Sequence[set[int]] | None = None,
    ) -> list[list[Hit]]:
        """Top-k hits for each query vector."""
        x = self.prepare_queries(vectors)
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        scores, ids = self.search_ids(x, k + extra, nprobe=nprobe, ef_search=ef_search)
        results = []
        for n, (row_s, row_i) in enumerate(zip(scores, ids, strict=True)):
            skip = exclude[n] if exclude else set()
            keep = [
                (s, i) for s, i in zip(row_s, row_i, strict=True) if i >= 0 and int(i) not in skip
            ][:k]
            results.append(self.lookup.hits(keep, include))
        return results

    def most_similar(
        self,
        positive: Sequence[Query] = (),
        negative: Sequence[Query] = (),
        k: int = 10,
        **kw: Any,
    ) -> list[Hit]:
        """Vector arithmetic as gensim's `most_similar`: the mean of the unit-length positive
        inputs minus the negative ones; inputs given by id are left out of the results."""
        vectors, weights, excluded = [], [], set()
        for item, weight in [(q, 1.0) for q in positive] + [(q, -1.0) for q in negative]:
            if isinstance(item, str):
                iid = self.lookup.iid_of(item)
                excluded.add(iid)
                v = self.lookup.vector_of_iid(iid)
            else:
                v = prepare_queries(np.asarray(item, dtype=np.float32), dim=self.dim, metric="dot")[
                    0
                ]
            vectors.append(v)
            weights.append(weight)
        mean = combine(vectors, weights)
        return self.search(mean[None, :], k, exclude=[excluded], **kw)[0]

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors for `texts`, made with the index's own model (loaded once)."""
        fingerprint = self.fingerprint
        if fingerprint is None or not self.manifest.get("text_model"):
            raise QueryError(
                "this index was built from vectors without a text model; query it with "
                "vectors or ids, not text"
            )
        if self._encoder is None:
            from embedlib.encode import TextEncoder, backend_for

            encoder = TextEncoder(
                fingerprint.name,
                normalize=fingerprint.normalize,
                max_seq_length=fingerprint.max_seq_length,
                backend=backend_for(fingerprint),
            )
            encoder.fingerprint.require_compatible(
                fingerprint, what="the query model", other_what="the index"
            )
            self._encoder = encoder
        return self._encoder.encode(list(texts))[0]

    def search_text(self, texts: Sequence[str], k: int = 10, **kw: Any) -> list[list[Hit]]:
        """Top-k hits for each text, embedded with the index's own model."""
        return self.search(self.encode_text(texts), k, **kw)

    def vector(self, doc_id: str) -> np.ndarray:
        """The indexed vector of a document (unit length for cosine)."""
        return self.lookup.vector_of_iid(self.lookup.iid_of(doc_id))
