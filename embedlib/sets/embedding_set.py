"""The embedding set on storage: its layout, its manifest, and the one way to write and
read it. Every writer (the embed job, imported and trained word vectors, recommender
items, clustered sets) goes through `EmbeddingSetManifest` and `write_vector_set`.

Layout of an embedding set at OUT (any fsspec URL)::

    OUT/manifest.json          written last; a set without it is incomplete
    OUT/part-NNNNN.parquet     committed parts: id, vector, text_hash, passthrough
    OUT/_job.json              the embed job's plan, options and scan (for resume)
    OUT/_commits/part-NNNNN.json   one commit record per part
    OUT/_attempts/...          work in progress (removed when the job completes)
    OUT/_quarantine/part-NNNNN.jsonl   rows that could not be read, with reasons

A part holds the documents of one split of the corpus (the embed job's unit of work).
A reader that globs `OUT/*.parquet` sees exactly the committed set.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib._version import __version__
from embedlib.embed.documents import CHUNK_COLUMNS, ID, TEXT_HASH, VECTOR, Documents
from embedlib.exceptions import EmbedlibError, IncompleteEmbeddingSetError, SourceError
from embedlib.models.fingerprint import STATIC, ModelFingerprint
from embedlib.options import Dtype, Metric
from embedlib.sets.columns import conform_table, unify_schemas, vector_array, vectors_of
from embedlib.storage import MANIFEST, file_sha256, read_json, utc_now, write_json_atomic

JOB = "_job.json"
COMMITS = "_commits"
ATTEMPTS = "_attempts"
QUARANTINE = "_quarantine"
FORMAT_NAME = "embedlib.embedding-set"
FORMAT_VERSION = 2  # 2: the part list is "parts" (version 1 called it "shards")
PART_ROWS = 100_000  # rows per part of a set written from memory


def part_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


@dataclass(frozen=True)
class PartEntry:
    """One part file of an embedding set (`file` None: its split held no document)."""

    index: int
    file: str | None
    rows: int
    bytes: int
    sha256: str | None
    source: Any = None  # where its rows came from (a split of the corpus, or a URL)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartEntry:
        return cls(
            index=int(data["index"]),
            file=data.get("file"),
            rows=int(data["rows"]),
            bytes=int(data.get("bytes") or 0),
            sha256=data.get("sha256"),
            source=data.get("source"),
        )


@dataclass(frozen=True, kw_only=True)
class EmbeddingSetManifest:
    """The manifest of an embedding set (`manifest.json`), typed."""

    model: ModelFingerprint
    metric: Metric
    parts: tuple[PartEntry, ...]
    counts: dict[str, Any]  # documents (and, from the embed job: rows_read, skipped, ...)
    source: dict[str, Any]
    dtype: Dtype = "float32"
    text_column: str | None = None
    id_column: str | None = ID
    options: dict[str, Any] | None = None  # the embed job's output-deciding options
    hash: dict[str, str] | None = None  # how `text_hash` was computed
    chunking: dict[str, Any] | None = None  # None: one row per document
    modality: str = "text"  # what the vectors were made from: "text" or "image"
    created_at: str = field(default_factory=utc_now)
    embedlib_version: str = __version__

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def documents(self) -> int:
        return int(self.counts["documents"])

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "embedlib_version": self.embedlib_version,
            "created_at": self.created_at,
            "model": self.model.to_dict(),
            "dim": self.dim,
            "normalize": self.model.normalize,
            "metric": self.metric,
            "dtype": self.dtype,
            "text_column": self.text_column,
            "id_column": self.id_column,
            "source": self.source,
            "counts": self.counts,
            "parts": [p.to_dict() for p in self.parts],
        }
        if self.options is not None:
            out["options"] = self.options
        if self.hash is not None:
            out["hash"] = self.hash
        if self.chunking is not None:
            out["chunking"] = self.chunking
        if self.modality != "text":
            out["modality"] = self.modality
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingSetManifest:
        parts = data.get("parts", data.get("shards", ()))  # version 1 named them shards
        return cls(
            model=ModelFingerprint.from_dict(data["model"]),
            metric=data.get("metric", "cosine"),
            parts=tuple(PartEntry.from_dict(p) for p in parts),
            counts=dict(data["counts"]),
            source=dict(data.get("source") or {}),
            dtype=data.get("dtype", "float32"),
            text_column=data.get("text_column"),
            id_column=data.get("id_column", ID),
            options=data.get("options"),
            hash=data.get("hash"),
            chunking=data.get("chunking"),
            modality=data.get("modality", "text"),
            created_at=data.get("created_at", ""),
            embedlib_version=data.get("embedlib_version", ""),
        )

    @classmethod
    def read(cls, fs: fsspec.AbstractFileSystem, path: str) -> EmbeddingSetManifest:
        return cls.from_dict(read_json(fs, join(path, MANIFEST)))

    def write(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        """Write the manifest last: the set is complete once it exists."""
        write_json_atomic(fs, join(path, MANIFEST), self.to_dict())


def refuse_existing_set(fs: fsspec.AbstractFileSystem, path: str, url: str) -> None:
    """Writers from memory write to a new location only."""
    if fs.exists(join(path, MANIFEST)):
        raise EmbedlibError(f"{url!r} already holds an embedding set; write to a new location")


@dataclass(frozen=True)
class PartFile:
    rows: int
    bytes: int
    sha256: str


def part_table(docs: Documents, vectors: np.ndarray, dtype: str) -> pa.Table:
    """The rows of a part: id, vector, content hash, then the passthrough columns (and for
    chunked documents the chunk number and span)."""
    return pa.Table.from_arrays(
        [
            pa.array(docs.ids, pa.string()),
            vector_array(vectors, dtype),
            pa.array(docs.hashes, pa.string()),
            *docs.passthrough.columns,
        ],
        names=[ID, VECTOR, TEXT_HASH, *docs.passthrough.column_names],
    )


class PartWriter:
    """Streams one part's documents and vectors into a Parquet file.

    Batches usually share one schema. When a later batch brings a column or a type the
    first did not have (JSON Lines do this), it starts a new chunk; `close` then rewrites
    the chunks into one file under the unified schema. Memory stays at one batch.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, *, dtype: str) -> None:
        self.fs = fs
        self.path = path
        self.dtype = dtype
        self._chunks: list[tuple[str, pa.Schema]] = []
        self._writer: pq.ParquetWriter | None = None
        self._handle: Any = None
        self.rows = 0

    def write(self, docs: Documents, vectors: np.ndarray) -> None:
        if len(docs) == 0:
            return
        table = part_table(docs, vectors, self.dtype)
        if self._writer is not None:
            schema = self._chunks[-1][1]
            fitted = conform_table(table, schema)
            if fitted is not None:
                self._writer.write_table(fitted)
                self.rows += table.num_rows
                return
            self._close_chunk()
        self._open_chunk(table.schema)
        assert self._writer is not None
        self._writer.write_table(table)
        self.rows += table.num_rows

    def _open_chunk(self, schema: pa.Schema) -> None:
        path = f"{self.path}.chunk{len(self._chunks)}"
        self._handle = self.fs.open(path, "wb")
        self._writer = pq.ParquetWriter(self._handle, schema)
        self._chunks.append((path, schema))

    def _close_chunk(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._handle.close()
            self._writer = None

    def close(self) -> PartFile | None:
        """Finish the file at `path`; None when no document was written."""
        self._close_chunk()
        if not self._chunks:
            return None
        if len(self._chunks) == 1:
            self.fs.mv(self._chunks[0][0], self.path)
        else:
            self._merge_chunks()
        size = int(self.fs.info(self.path)["size"])
        return PartFile(rows=self.rows, bytes=size, sha256=file_sha256(self.fs, self.path))

    def _merge_chunks(self) -> None:
        schema = unify_schemas([s for _, s in self._chunks])
        with self.fs.open(self.path, "wb") as out, pq.ParquetWriter(out, schema) as writer:
            for path, _ in self._chunks:
                with self.fs.open(path, "rb") as fh:
                    for batch in pq.ParquetFile(fh).iter_batches():
                        fitted = conform_table(
                            pa.Table.from_batches([batch]), schema, text_fallback=True
                        )
                        assert fitted is not None
                        writer.write_table(fitted)
                self.fs.rm(path)


class EmbeddingSet:
    """Read an embedding set written by `embed_corpus` (or any writer of this layout)."""

    def __init__(self, url: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.fs, self.path = url_to_fs(url, **(storage_options or {}))
        manifest_path = join(self.path, MANIFEST)
        if not self.fs.exists(manifest_path):
            if self.fs.exists(join(self.path, JOB)):
                raise IncompleteEmbeddingSetError(
                    f"{url!r} is an unfinished embedding set (no {MANIFEST} yet): re-run the "
                    "embed command that made it to finish it"
                )
            raise SourceError(f"{url!r} is not an embedding set: it has no {MANIFEST}")
        self.manifest = EmbeddingSetManifest.read(self.fs, self.path)

    @property
    def fingerprint(self) -> ModelFingerprint:
        return self.manifest.model

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def metric(self) -> str:
        return self.manifest.metric

    @property
    def text_column(self) -> str | None:
        return self.manifest.text_column

    def __len__(self) -> int:
        return self.manifest.documents

    @property
    def files(self) -> list[str]:
        return [join(self.path, p.file) for p in self.manifest.parts if p.file]

    def verify(self) -> None:
        """Check every part file against the manifest's row count and SHA-256."""
        for part in self.manifest.parts:
            if not part.file:
                continue
            path = join(self.path, part.file)
            if not self.fs.exists(path):
                raise SourceError(f"part {part.file!r} of {self.url!r} is missing")
            digest = file_sha256(self.fs, path)
            if digest != part.sha256:
                raise SourceError(
                    f"part {part.file!r} of {self.url!r} does not match its checksum "
                    "(changed or corrupt since it was written); re-embed into a new location"
                )
            with self.fs.open(path, "rb") as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
            if rows != part.rows:
                raise SourceError(
                    f"part {part.file!r} has {rows} rows, the manifest says {part.rows}"
                )

    def iter_tables(
        self, columns: Sequence[str] | None = None, batch_rows: int = 8192
    ) -> Iterator[pa.Table]:
        """Yield the set in batches (part order); vectors stay as stored."""
        for path in self.files:
            with self.fs.open(path, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(
                    batch_size=batch_rows, columns=columns
                ):
                    yield pa.Table.from_batches([batch])

    def iter_vectors(self, batch_rows: int = 8192) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield (ids, float32 vectors) batches in part order."""
        for table in self.iter_tables([ID, VECTOR], batch_rows):
            yield table.column(ID).to_pylist(), vectors_of(table.column(VECTOR))

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole set as one table (for sets that fit in memory); float32 vectors."""
        tables = list(self.iter_tables(columns))
        if not tables:
            return pa.table({ID: pa.array([], pa.string())})
        table = pa.concat_tables(tables, promote_options="permissive")
        if VECTOR in table.column_names:
            vecs = vectors_of(table.column(VECTOR))
            idx = table.column_names.index(VECTOR)
            table = table.set_column(idx, VECTOR, vector_array(vecs, "float32"))
        return table

    def read_vectors(self) -> tuple[list[str], np.ndarray]:
        """All ids and vectors (float32, in part order), for sets that fit in memory."""
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        for batch_ids, vecs in self.iter_vectors():
            ids.extend(batch_ids)
            blocks.append(vecs)
        matrix = np.concatenate(blocks) if blocks else np.zeros((0, self.dim), np.float32)
        return ids, matrix


def write_vector_set(
    out: str,
    ids: Sequence[str],
    vectors: np.ndarray,
    *,
    name: str,
    metric: str,
    source: Mapping[str, Any],
    columns: Mapping[str, Sequence[Any]] | None = None,
    text_column: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> EmbeddingSetManifest:
    """Write `ids` and their `vectors` (plus optional passthrough `columns`, one of them
    the text when `text_column` names it) as an embedding set at `out` (a new location);
    returns its manifest. The set has no text
    model: its fingerprint (precision "static") names the vectors' origin and digests
    the ids and vectors themselves."""
    fs, path = url_to_fs(out, **(storage_options or {}))
    refuse_existing_set(fs, path, out)
    if text_column is not None and text_column not in (columns or {}):
        raise ValueError(f"text_column {text_column!r} is not one of the columns given")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for vectors of shape {vectors.shape}")
    digest = hashlib.sha256()
    fs.makedirs(path, exist_ok=True)
    parts = []
    for n, start in enumerate(range(0, len(ids), PART_ROWS)):
        part_ids = [str(i) for i in ids[start : start + PART_ROWS]]
        block = vectors[start : start + PART_ROWS]
        digest.update("\n".join(part_ids).encode())
        digest.update(block.tobytes())
        table = pa.table(
            {
                ID: pa.array(part_ids, pa.string()),
                VECTOR: pa.FixedSizeListArray.from_arrays(
                    pa.array(block.reshape(-1)), block.shape[1]
                ),
                **{
                    k: pa.array(list(v[start : start + PART_ROWS]))
                    for k, v in (columns or {}).items()
                },
            }
        )
        file = join(path, part_file(n))
        with fs.open(file, "wb") as fh:
            pq.write_table(table, fh, row_group_size=50_000)
        parts.append(PartEntry(n, part_file(n), len(part_ids), fs.size(file),
                               file_sha256(fs, file), source.get("url")))  # fmt: skip
    fingerprint = ModelFingerprint(
        name=name, weights_sha256=digest.hexdigest(), dim=int(vectors.shape[1]),
        normalize=False, max_seq_length=0, precision=STATIC,
    )  # fmt: skip
    manifest = EmbeddingSetManifest(
        model=fingerprint, metric=metric, parts=tuple(parts),  # type: ignore[arg-type]
        counts={"documents": len(ids)}, source=dict(source), text_column=text_column,
    )  # fmt: skip
    manifest.write(fs, path)
    return manifest


def write_document_set(
    url: str, out: str, *, storage_options: dict[str, Any] | None = None
) -> EmbeddingSetManifest:
    """An embedding set of whole documents from a set of chunks: each document's vector
    is the mean of its chunks' made unit length (what clustering and maps use), with the
    columns of its first chunk. Read in one streaming pass; the documents' vectors are
    held in memory."""
    chunks = EmbeddingSet(url, storage_options=storage_options)
    fs, path = url_to_fs(out, **(storage_options or {}))
    refuse_existing_set(fs, path, out)
    sums: dict[str, np.ndarray] = {}
    firsts: dict[str, dict[str, Any]] = {}
    for table in chunks.iter_tables():
        vectors = vectors_of(table.column(VECTOR))
        rest = table.drop_columns([c for c in (VECTOR, *CHUNK_COLUMNS) if c in table.column_names])
        for n, row in enumerate(rest.to_pylist()):
            doc = row[ID]
            if doc in sums:
                sums[doc] += vectors[n]
            else:
                sums[doc] = vectors[n].astype(np.float64)
                firsts[doc] = row
    ids = list(sums)
    matrix = np.stack([sums[i] for i in ids]) if ids else np.zeros((0, chunks.dim))
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix = (matrix / np.where(norms > 0, norms, 1)).astype(np.float32)
    columns = {c: [firsts[i][c] for i in ids] for c in (firsts[ids[0]] if ids else {}) if c != ID}
    table = pa.table({ID: pa.array(ids, pa.string()), VECTOR: vector_array(matrix, "float32"),
                      **{c: pa.array(v) for c, v in columns.items()}})  # fmt: skip
    fs.makedirs(path, exist_ok=True)
    file = join(path, part_file(0))
    with fs.open(file, "wb") as fh:
        pq.write_table(table, fh, row_group_size=50_000)
    manifest = EmbeddingSetManifest(
        model=chunks.fingerprint, metric=chunks.manifest.metric, text_column=chunks.text_column,
        parts=(PartEntry(0, part_file(0), len(ids), fs.size(file), file_sha256(fs, file), url),),
        counts={"documents": len(ids)}, source={"url": url, "kind": "documents of chunks"},
    )  # fmt: skip
    manifest.write(fs, path)
    return manifest
