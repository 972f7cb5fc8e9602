"""The docs tables of an index version: what joins a FAISS int64 id to the document.

Each serving shard has a docs table (`docs-NNNNN.parquet`: `_iid`, `id`, the text, the
content hash and the metadata columns), sorted by `_iid`, and a vector file row-aligned
with it (`vectors.py`; indexes built before vector files keep the vector in the docs
table). A `ShardDocs` holds a table's int64 and string ids in memory (Arrow and NumPy
arrays: no Python object per row), reads its metadata columns on the first filter, and
reads text by row group and vectors by row on demand. `DocsLookup` spans the shards of a
version: string id -> int64 ids (a sorted permutation of the ids, binary-searched),
int64 id -> vector, and the docs rows of a search's hits.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedlib.embed.documents import (
    CHUNK,
    CHUNK_COLUMNS,
    CHUNK_END,
    CHUNK_START,
    ID,
    TEXT_HASH,
    VECTOR,
)
from embedlib.embed.images import IMAGE, IMAGE_COLUMNS, THUMBNAIL
from embedlib.exceptions import QueryError, SourceError
from embedlib.index.store.vectors import VectorFile
from embedlib.sets.columns import vectors_of

if TYPE_CHECKING:
    from embedlib.index.store.version import IndexVersion

IID = "_iid"  # the FAISS id of a row, in the docs tables
# columns that are not metadata (an image set's image and thumbnail are fields of their own)
NOT_METADATA = (IID, ID, VECTOR, TEXT_HASH, *CHUNK_COLUMNS, *IMAGE_COLUMNS)
DAMAGED = "the docs tables do not hold an id the index returned; the index is damaged"
CACHED_GROUPS = 64  # row groups of text/vectors kept per shard
VECTOR_CACHE_BYTES = 128 * 1024 * 1024  # vectors of filtered rows' row groups kept per shard


class StringsByPosition:
    """The strings of an Arrow string array by position, sliced from its buffers: a few
    ids per query without a compute call (`take` costs ~10 us a call on the hot path)."""

    def __init__(self, array: pa.Array) -> None:
        if array.null_count:
            raise SourceError("the docs tables hold a row without an id; the index is damaged")
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            array = array.cast(pa.string())  # string views: offsets and data of its own
        _, offsets, data = array.buffers()
        width = np.int64 if pa.types.is_large_string(array.type) else np.int32
        end = array.offset + len(array) + 1
        self._offsets = np.frombuffer(offsets, width)[array.offset : end]
        self._data = memoryview(data) if data is not None else memoryview(b"")

    def take(self, positions: np.ndarray) -> list[str]:
        o, d = self._offsets, self._data
        starts, ends = o[positions].tolist(), o[positions + 1].tolist()
        return [str(d[a:b], "utf-8") for a, b in zip(starts, ends, strict=True)]


class ShardDocs:
    """One shard's docs table."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        path: str,
        text_column: str | None,
        vector_file: VectorFile | None = None,
    ) -> None:
        self.fs, self.path, self.text_column = fs, path, text_column
        self.vector_file = vector_file
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            self.schema: pa.Schema = pf.schema_arrow
            self.columns: list[str] = self.schema.names
            self.metadata_columns = [
                c for c in self.columns if c not in (*NOT_METADATA, text_column)
            ]
            table = pf.read(columns=[IID, ID, *([CHUNK] if CHUNK in self.columns else [])])
            self.group_starts = np.cumsum(
                [0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
            )
        self.iids: np.ndarray = table.column(IID).to_numpy()
        # a document of several chunks here (an index whose documents are all one chunk
        # answers as an index of whole documents)
        self.split_documents = CHUNK in self.columns and bool(
            len(table) and np.max(table.column(CHUNK).to_numpy()) > 0
        )
        self.ids: pa.Array = table.column(ID).combine_chunks()
        self._id_strings = StringsByPosition(self.ids)
        self._metadata: pa.Table | None = None
        self._groups: dict[int, dict[str, list[Any]]] = {}
        self._vector_groups: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.iids)

    @property
    def metadata(self) -> pa.Table:
        """The metadata columns of every row, for filters (read on first use)."""
        with self._lock:
            if self._metadata is None:
                with self.fs.open(self.path, "rb") as fh:
                    self._metadata = pq.read_table(fh, columns=self.metadata_columns)
            return self._metadata

    def ids_at(self, positions: np.ndarray) -> list[str]:
        """The string ids of the rows at `positions`."""
        return self._id_strings.take(positions)

    def positions(self, iids: np.ndarray) -> np.ndarray:
        """Row of each int64 id in this table, -1 where it is not here."""
        if len(self.iids) == 0:
            return np.full(len(iids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.iids, iids), len(self.iids) - 1)
        return np.where(self.iids[pos] == iids, pos, -1)

    def rows(
        self, positions: np.ndarray, vectors: bool = True, images: bool = False
    ) -> list[dict[str, Any]]:
        """The rows at `positions` (all columns but the image file's; with `vectors`, the
        vector as a float32 array, read from the vector file; with `images`, the image
        file's bytes, read for these rows only)."""
        out = []
        image_groups: dict[int, pa.ChunkedArray] = {}  # read once per call, not cached
        for p in positions.tolist():
            g = int(np.searchsorted(self.group_starts, p, side="right") - 1)
            group = self._group(g)
            r = p - int(self.group_starts[g])
            row = {c: v[r] for c, v in group.items()}
            if images and IMAGE in self.columns:
                if g not in image_groups:
                    image_groups[g] = self._images(g)
                row[IMAGE] = image_groups[g][r].as_py()
            out.append(row)
        if vectors and self.vector_file is not None and len(out):
            for row, vector in zip(out, self.vector_file.get(positions), strict=True):
                row[VECTOR] = vector
        return out

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """The indexed vectors at `positions` (an exact filtered search's rows), read from
        the row groups that hold them only, those kept for the next request (up to
        VECTOR_CACHE_BYTES per table, least recently used dropped)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.vector_file is not None:
            return self.vector_file.get(positions)
        groups = np.searchsorted(self.group_starts, positions, side="right") - 1
        out: np.ndarray | None = None
        for g in np.unique(groups).tolist():
            block = self._group_vectors(g)
            if out is None:
                out = np.empty((len(positions), block.shape[1]), np.float32)
            here = groups == g
            out[here] = block[positions[here] - int(self.group_starts[g])]
        return out if out is not None else np.zeros((0, 0), np.float32)

    def all_vectors(self) -> np.ndarray:
        """Every row's vector, in row order (a whole-vocabulary read: analogies, maps)."""
        if self.vector_file is not None:
            return self.vector_file.get(np.arange(len(self)))
        with self.fs.open(self.path, "rb") as fh:
            table = pq.read_table(fh, columns=[VECTOR])
        return np.ascontiguousarray(vectors_of(table.column(VECTOR)), dtype=np.float32)

    def _group_vectors(self, g: int) -> np.ndarray:
        with self._lock:
            block = self._vector_groups.get(g)
            if block is not None:
                self._vector_groups.move_to_end(g)
                return block
        with self.fs.open(self.path, "rb") as fh:
            table = pq.ParquetFile(fh).read_row_group(g, columns=[VECTOR])
        block = np.ascontiguousarray(vectors_of(table.column(VECTOR)), dtype=np.float32)
        with self._lock:
            self._vector_groups[g] = block
            while (
                len(self._vector_groups) > 1
                and sum(b.nbytes for b in self._vector_groups.values()) > VECTOR_CACHE_BYTES
            ):
                self._vector_groups.popitem(last=False)
        return block

    def _group(self, g: int) -> dict[str, list[Any]]:
        with self._lock:
            cached = self._groups.get(g)
        if cached is not None:
            return cached
        with self.fs.open(self.path, "rb") as fh:
            table = pq.ParquetFile(fh).read_row_group(
                g, columns=[c for c in self.columns if c != IMAGE]
            )
        cols = {c: table.column(c).to_pylist() for c in table.column_names if c != VECTOR}
        if VECTOR in table.column_names:  # an index built before vector files
            cols[VECTOR] = list(vectors_of(table.column(VECTOR)))
        with self._lock:
            if len(self._groups) >= CACHED_GROUPS:
                self._groups.pop(next(iter(self._groups)))
            self._groups[g] = cols
        return cols

    def _images(self, g: int) -> pa.ChunkedArray:
        """The image files' bytes of row group `g` (not cached: asked rarely)."""
        with self.fs.open(self.path, "rb") as fh:
            return pq.ParquetFile(fh).read_row_group(g, columns=[IMAGE]).column(IMAGE)


class DocsLookup:
    """The docs tables of an index version, side by side. In a chunked index a row is a
    chunk of a document: the string id is the document's, shared by its chunks."""

    @classmethod
    def open(cls, version: IndexVersion, shards: Sequence[int] | None = None) -> DocsLookup:
        """The docs tables of a version (of some of its shards)."""
        m = version.manifest
        numbers = range(len(m.shards)) if shards is None else shards
        return cls(
            [
                ShardDocs(
                    version.fs,
                    version.file(m.shards[s].docs),
                    m.text_column,
                    version.open_vectors(s),
                )
                for s in numbers
            ],
            m.text_column,
        )

    def __init__(self, shards: Sequence[ShardDocs], text_column: str | None) -> None:
        self.shards = list(shards)
        self.text_column = text_column
        self.chunked = any(docs.split_documents for docs in self.shards)
        self.images = any(IMAGE in docs.columns for docs in self.shards)  # an image index
        self._id_order: tuple[pa.Array, np.ndarray, np.ndarray] | None = None
        self._id_lock = threading.Lock()
        self.metadata_columns: frozenset[str] = frozenset(
            c for docs in self.shards for c in docs.metadata_columns
        )
        # each metadata column's type (a filter's values are checked against it)
        self.metadata_types: dict[str, pa.DataType] = {
            c: docs.schema.field(c).type for docs in self.shards for c in docs.metadata_columns
        }

    def iids_of(self, doc_id: str, *, missing_ok: bool = False) -> list[int]:
        """The int64 ids of a document's rows (its chunks); QueryError when the index does
        not hold it (with `missing_ok`, none). A binary search over the ids in sorted
        order (made on the first lookup: a permutation array, 8 bytes a row)."""
        with self._id_lock:
            if self._id_order is None:
                ids = (
                    pa.concat_arrays([d.ids for d in self.shards])
                    if self.shards
                    else pa.array([], pa.string())
                )
                iids = (
                    np.concatenate([d.iids for d in self.shards])
                    if self.shards
                    else np.zeros(0, np.int64)
                )
                order = pc.sort_indices(ids).to_numpy()
                self._id_order = (ids, order, iids)
        ids, order, iids = self._id_order
        lo, hi = 0, len(order)
        while lo < hi:  # the first sorted position whose id is >= doc_id
            mid = (lo + hi) // 2
            if ids[int(order[mid])].as_py() < doc_id:
                lo = mid + 1
            else:
                hi = mid
        found = []
        while lo < len(order) and ids[int(order[lo])].as_py() == doc_id:
            found.append(int(iids[order[lo]]))
            lo += 1
        if not found and not missing_ok:
            raise QueryError(f"id {doc_id!r} is not in the index")
        return sorted(found)

    def document_vector(self, doc_id: str) -> np.ndarray:
        """A document's vector: its row's, or for chunks their mean made unit length."""
        vectors = [self.vector_of_iid(i) for i in self.iids_of(doc_id)]
        if len(vectors) == 1:
            return vectors[0]
        mean = np.mean(vectors, axis=0)
        norm = np.linalg.norm(mean)
        return (mean / norm if norm > 0 else mean).astype(np.float32)

    def vector_of_iid(self, iid: int) -> np.ndarray:
        """The indexed vector (unit length for cosine) of an int64 id."""
        for docs in self.shards:
            pos = docs.positions(np.array([iid], np.int64))
            if pos[0] >= 0:
                return docs.vectors(pos)[0]
        raise QueryError(f"internal id {iid} is not in the index")

    def string_ids(self, iids: np.ndarray) -> list[str]:
        """The string ids of int64 ids, from the ids held in memory (no row reads)."""
        if len(self.shards) == 1:  # the common case: no scatter over shards
            pos = self.shards[0].positions(iids)
            if (pos < 0).any():
                raise SourceError(DAMAGED)
            return self.shards[0].ids_at(pos)
        out: list[str | None] = [None] * len(iids)
        for docs in self.shards:
            pos = docs.positions(iids)
            found = np.flatnonzero(pos >= 0)
            for n, doc_id in zip(found.tolist(), docs.ids_at(pos[found]), strict=True):
                out[n] = doc_id
        if any(doc_id is None for doc_id in out):
            raise SourceError(DAMAGED)
        return out  # type: ignore[return-value]

    def rows(self, iids: np.ndarray, vectors: bool = True, images: bool = False) -> list[DocRow]:
        """The docs rows of int64 ids, each read with its row group (and, with `vectors`,
        its vector: one read from the vector file per row, so only when asked; the same
        for the image file's bytes with `images`)."""
        rows: list[dict[str, Any] | None] = [None] * len(iids)
        for docs in self.shards:
            pos = docs.positions(iids)
            found = np.flatnonzero(pos >= 0)
            found_rows = docs.rows(pos[found], vectors, images)
            for n, found_row in zip(found.tolist(), found_rows, strict=True):
                rows[n] = found_row
        if any(r is None for r in rows):
            raise SourceError(DAMAGED)
        return [DocRow(r, self.text_column) for r in rows]  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class DocRow:
    """One row of a docs table: a document, or a chunk of one."""

    values: dict[str, Any]  # column -> value
    text_column: str | None

    @property
    def id(self) -> str:
        return str(self.values[ID])

    @property
    def text(self) -> str | None:
        return self.values.get(self.text_column) if self.text_column else None

    @property
    def metadata(self) -> dict[str, Any]:
        skip = (*NOT_METADATA, self.text_column)
        return {c: v for c, v in self.values.items() if c not in skip}

    @property
    def vector(self) -> np.ndarray:
        return np.asarray(self.values[VECTOR], dtype=np.float32)

    @property
    def thumbnail(self) -> bytes | None:
        return self.values.get(THUMBNAIL)

    @property
    def image(self) -> bytes | None:
        return self.values.get(IMAGE)

    @property
    def chunk(self) -> int | None:
        return self.values.get(CHUNK)

    @property
    def start(self) -> int:
        return int(self.values[CHUNK_START])

    @property
    def end(self) -> int:
        return int(self.values[CHUNK_END])
