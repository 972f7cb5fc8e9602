"""Updating a published index in place, as a new version: add, change and delete
documents without a full rebuild.

1. Lock the index root (`lock.py`): a second update waits or is refused.
2. Read the new corpus (or a delta of rows to upsert, plus ids to delete) the way
   `embedlib embed` reads it, and compare each document's content hash with the one the
   index keeps: new and changed documents are embedded (on Ray, by `embed_corpus`, with
   the index's own model: another model is refused naming both); unchanged ones never.
3. Per serving shard: remove the deleted and changed documents' vectors (`remove_ids`:
   gone from the inverted lists, no tombstones, so deletions never accumulate and there
   is nothing left to compact), add the new vectors to the smallest shards with the
   existing trained quantizer and fresh int64 ids, and rewrite its docs table. A shard
   the update does not touch is copied as it is.
4. Measure drift (`drift.py`: distance of the new vectors to their nearest centroid
   against the kept ones', balance of the list sizes) and warn when the index should be
   retrained (`retrain.py`).
5. Publish the new version atomically (CURRENT); the previous one stays until `gc`
   (`gc.py`).

A crash leaves the published version as it was. The embedding step works in
`INDEX/_updates/<digest of the work>/`, so a re-run of the same update resumes it.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import faiss
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.embed.corpus import read_corpus
from embedlib.embed.corpus.discover import Format
from embedlib.embed.corpus.read import ROW, RawBatch
from embedlib.embed.documents import ID, TEXT_HASH, VECTOR, DocumentSpec, prepare, text_hash
from embedlib.embed.job import embed_corpus
from embedlib.exceptions import EmbedlibError, ModelMismatchError, SourceError
from embedlib.index.binary import BinaryIndex
from embedlib.index.build.lexical import write_lexical
from embedlib.index.faiss_ops import prepare_vectors, read_index_file, write_index
from embedlib.index.store.docs import IID, NOT_METADATA
from embedlib.index.store.layout import publish, resolve, staging_path
from embedlib.index.store.lock import index_lock
from embedlib.index.store.vectors import filter_vector_file, read_vector_positions
from embedlib.index.store.version import TRAINED, IndexManifest
from embedlib.index.update.drift import Drift, imbalance, kept_sample, measure_drift
from embedlib.models.encoders import backend_for
from embedlib.models.fingerprint import ModelFingerprint, canonical_model_name
from embedlib.options import EmbedOptions, RunOptions
from embedlib.sets.columns import conform_table, fitted_schema, vectors_of
from embedlib.sets.embedding_set import EmbeddingSet
from embedlib.storage import file_sha256

log = logging.getLogger(__name__)
UPDATES = "_updates"


@dataclass
class UpdateReport:
    root: str
    previous: str
    version: str | None  # None: nothing changed, nothing published
    added: int
    changed: int
    deleted: int
    kept: int
    embedded: int
    seconds: float
    drift: Drift | None = None
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        target = f"new version {self.version}" if self.version else "no change: nothing published"
        lines = [
            f"index: {self.root} ({self.previous} -> {target})",
            f"  added {self.added}, changed {self.changed}, deleted {self.deleted}, kept "
            f"{self.kept}; embedded {self.embedded} in {self.seconds:.1f}s",
        ]
        if self.drift is not None:
            d = self.drift
            lines.append(
                f"  drift: new vectors {d.new_distance:.4f} from their centroid (kept "
                f"{d.kept_distance:.4f}); list imbalance {d.imbalance_before:.2f} -> "
                f"{d.imbalance_after:.2f}"
            )
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass
class _Incoming:
    """The rows an update brings: every id seen, and the documents to (re)embed."""

    ids: list[str]
    hashes: list[str]
    rows: list[pa.Table]  # id, text and passthrough columns of every incoming document


def update_index(
    index: str,
    source: str | None = None,
    *,
    delta: bool = False,
    delete_ids: Sequence[str] = (),
    upserts: pa.Table | None = None,
    text_column: str | None = None,
    id_column: str = ID,
    model: str | None = None,
    format: Format | None = None,
    wait_s: float = 0.0,
    run: RunOptions | None = None,
) -> UpdateReport:
    """Bring the index at `index` up to date with `source` (the whole new corpus; ids
    it lacks are deleted) or, with `delta`, upsert `source`'s rows; `delete_ids` and the
    rows of `upserts` (a table with id and text columns) are applied too. Publishes a
    new version when anything changed."""
    run = run or RunOptions()
    start = time.perf_counter()
    fs, root = url_to_fs(index, **run.storage_options)
    root = root.rstrip("/")
    with index_lock(fs, root, wait_s=wait_s) as lease:
        version_path = resolve(fs, root)
        previous = posixpath.basename(version_path)
        manifest = IndexManifest.read(fs, version_path)
        fingerprint = _updatable(manifest, index, model)
        text_column = text_column or manifest.text_column or "text"
        current = _current_docs(fs, version_path, manifest, text_column)
        spec = DocumentSpec(text_column=text_column, id_column=id_column)
        incoming = _read_incoming(source, upserts, spec, format, run)
        known = {doc_id: h for doc_id, (_, h) in current.items()}
        new_hash = dict(zip(incoming.ids, incoming.hashes, strict=True))
        added = [i for i in incoming.ids if i not in known]
        changed = [i for i in incoming.ids if i in known and known[i] != new_hash[i]]
        gone = set(delete_ids) | (
            set() if delta or source is None else known.keys() - new_hash.keys()
        )
        missing = [i for i in delete_ids if i not in known and i not in new_hash]
        if missing:
            raise SourceError(
                f"{len(missing)} ids to delete are not in the index (e.g. {missing[:3]}); "
                "nothing was changed"
            )
        deleted = sorted(gone - new_hash.keys())
        same_text = {i for i in incoming.ids if i in known and known[i] == new_hash[i]}
        restamped = _restamped(fs, version_path, manifest, incoming, same_text, text_column)
        todo = set(added) | set(changed)
        changed += sorted(restamped)
        kept = len(known) - len(deleted) - len(changed)
        if not todo and not deleted and not restamped:
            return UpdateReport(index, previous, None, 0, 0, 0, kept, 0,
                                time.perf_counter() - start)  # fmt: skip
        vectors, rows = (
            _embed(fs, root, index, incoming, todo, spec, fingerprint, manifest, run)
            if todo
            else (np.zeros((0, manifest.dim), np.float32), None)
        )
        if restamped:  # metadata changed, text not: the rows move with their vectors
            vectors = np.concatenate([vectors, restamped.vectors])
            rows = pa.concat_tables([t for t in (rows, restamped.rows) if t is not None],
                                    promote_options="permissive")  # fmt: skip
        remove = {iid for i in [*deleted, *changed] for iid in current[i][0]}
        next_iid = 1 + max((iid for iids, _ in current.values() for iid in iids), default=-1)
        staging = staging_path(root)
        try:
            new_manifest, drift = _write_version(
                fs, version_path, staging, manifest, remove, vectors, rows, next_iid
            )
            if manifest.lexical is not None and manifest.text_column:
                # the rewritten shards' postings, and the statistics of all (in this
                # process: an update rewrites a few shards)
                rewrite = [
                    a != b for a, b in zip(new_manifest.shards, manifest.shards, strict=True)
                ]
                shards, lexical = write_lexical(
                    fs, staging, new_manifest.shards, manifest.text_column,
                    manifest.lexical.language, replace(run, runner="local"), rewrite=rewrite,
                )  # fmt: skip
                new_manifest = replace(new_manifest, shards=tuple(shards), lexical=lexical)
            stats = {"added": len(added), "changed": len(changed), "deleted": len(deleted),
                     "kept": kept}  # fmt: skip
            replace(new_manifest, updated_from=previous, update=stats).write(fs, staging)
            version = publish(fs, root, staging, lease)
        except BaseException:
            if fs.exists(staging):
                fs.rm(staging, recursive=True)
            raise
        if fs.exists(posixpath.join(root, UPDATES)):
            fs.rm(posixpath.join(root, UPDATES), recursive=True)
    report = UpdateReport(index, previous, version, len(added), len(changed), len(deleted),
                          kept, len(todo), time.perf_counter() - start, drift)  # fmt: skip
    if drift is not None and drift.should_retrain:
        report.warnings.append(
            "the new vectors do not fit the trained quantizer well (see drift); rebuild with "
            f"`embedlib index --retrain {index}` to retrain it on the current documents"
        )
    return report


def _updatable(manifest: IndexManifest, index: str, model: str | None) -> ModelFingerprint:
    """The index's fingerprint; refuse indexes an update cannot extend."""
    if manifest.vectors is None:
        raise EmbedlibError(
            f"{index!r} was built before indexes kept their vectors in vector files; rebuild "
            f"it once with `embedlib index --retrain {index}`, then update it"
        )
    if manifest.model is None or not manifest.text_model:
        raise EmbedlibError(
            f"{index!r} was built from vectors without a text model; update its vectors and "
            "rebuild it with `embedlib index`"
        )
    if manifest.modality == "image":
        raise EmbedlibError(
            f"{index!r} holds images; updates embed texts. Embed the new images into an "
            "embedding set (`embedlib embed IMAGES OUT --model ...`) and build the index "
            "again with `embedlib index` from both sets"
        )
    fingerprint = manifest.model
    if model is not None and canonical_model_name(model) != fingerprint.name:
        raise ModelMismatchError(
            f"the index {index!r} holds vectors of model {fingerprint.name!r}; this update "
            f"asks for {canonical_model_name(model)!r}. Vectors of two models cannot share an "
            "index: update with the index's model, or embed and index the corpus anew."
        )
    if not manifest.plan.mergeable:
        raise EmbedlibError(
            f"{index!r} is {manifest.factory}, whose vectors cannot be removed in place; "
            "rebuild it with `embedlib index`"
        )
    return fingerprint


def _current_docs(
    fs: fsspec.AbstractFileSystem, version_path: str, manifest: IndexManifest, text_column: str
) -> dict[str, tuple[list[int], str]]:
    """id -> (int64 ids of its rows: one, or one per chunk; content hash) of every
    indexed document."""
    out: dict[str, tuple[list[int], str]] = {}
    for shard in manifest.shards:
        with fs.open(posixpath.join(version_path, shard.docs), "rb") as fh:
            names = pq.read_schema(fh).names
            fh.seek(0)
            if TEXT_HASH in names:
                table = pq.read_table(fh, columns=[IID, ID, TEXT_HASH])
                hashes = table.column(TEXT_HASH).to_pylist()
            elif text_column in names:  # indexes built before hashes were kept
                table = pq.read_table(fh, columns=[IID, ID, text_column])
                hashes = [text_hash(t or "") for t in table.column(text_column).to_pylist()]
            else:
                raise EmbedlibError(
                    "the index keeps neither content hashes nor texts for its documents, so an "
                    "update cannot tell changed ones: rebuild it with `embedlib index`"
                )
        for iid, doc_id, h in zip(table.column(IID).to_pylist(), table.column(ID).to_pylist(),
                                  hashes, strict=True):  # fmt: skip
            found = out.get(doc_id)
            if found is None:
                out[doc_id] = ([int(iid)], h)
            else:
                found[0].append(int(iid))
    return out


@dataclass
class _Restamped:
    """Documents whose text is unchanged but whose metadata the update changes: their docs
    rows (chunks included) carrying the new metadata, and their vectors as indexed."""

    ids: list[str]
    rows: pa.Table
    vectors: np.ndarray

    def __bool__(self) -> bool:
        return bool(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)


def _restamped(
    fs: fsspec.AbstractFileSystem,
    version_path: str,
    manifest: IndexManifest,
    incoming: _Incoming,
    same_text: set[str],
    text_column: str,
) -> _Restamped:
    """The documents of `same_text` whose incoming metadata differs from the indexed one
    (an upsert replaces a document whole: a column it leaves out becomes null)."""
    none = _Restamped([], pa.table({}), np.zeros((0, manifest.dim), np.float32))
    if not same_text:
        return none
    wanted = pa.array(sorted(same_text), pa.string())
    new = pa.concat_tables(incoming.rows, promote_options="permissive")
    new = new.filter(pc.is_in(new.column(ID), value_set=wanted))
    new_meta = {
        row.pop(ID): {k: v for k, v in row.items() if k != text_column and v is not None}
        for row in new.to_pylist()
    }
    parts, vector_parts = [], []
    assert manifest.vectors is not None
    for shard in manifest.shards:
        with fs.open(posixpath.join(version_path, shard.docs), "rb") as fh:
            table = pq.read_table(fh)
        here = pc.is_in(table.column(ID), value_set=wanted)
        parts.append(table.filter(here))
        vector_parts.append(read_vector_positions(
            fs, posixpath.join(version_path, shard.vectors or ""), manifest.vectors,
            np.flatnonzero(here.to_numpy(zero_copy_only=False)),
        ))  # fmt: skip
    old = pa.concat_tables(parts, promote_options="permissive")
    old_vectors = np.concatenate(vector_parts)
    meta = [c for c in old.column_names if c not in (*NOT_METADATA, text_column)]
    old_meta = {
        row.pop(ID): {k: v for k, v in row.items() if v is not None}
        for row in old.select([ID, *meta]).to_pylist()
    }
    ids = sorted(i for i, m in old_meta.items() if m != new_meta[i])
    if not ids:
        return none
    chosen = pc.is_in(old.column(ID), value_set=pa.array(ids, pa.string()))
    rows = old.filter(chosen).drop_columns([IID, *meta])
    vectors = old_vectors[chosen.to_numpy(zero_copy_only=False)]
    row_ids = rows.column(ID).to_pylist()
    for name in [c for c in new.column_names if c not in (ID, text_column)]:
        values = [new_meta[i].get(name) for i in row_ids]
        rows = rows.append_column(name, pa.array(values, new.schema.field(name).type))
    return _Restamped(ids, rows, vectors)


def _read_incoming(
    source: str | None,
    upserts: pa.Table | None,
    spec: DocumentSpec,
    format: Format | None,
    run: RunOptions,
) -> _Incoming:
    """Every incoming document (id, content hash, row); duplicate ids are refused."""
    ids: list[str] = []
    hashes: list[str] = []
    rows: list[pa.Table] = []
    for relpath, raw in _raw_batches(source, upserts, spec, format, run):
        if spec.id_column not in raw.table.column_names:
            raise SourceError(
                f"{relpath!r} has no id column {spec.id_column!r}: an update matches documents "
                "by id. Name the id column with --id-column."
            )
        docs = prepare(raw, spec, relpath=relpath)
        if docs.quarantined:
            bad = docs.quarantined[0]
            raise SourceError(
                f"{len(docs.quarantined)} rows of {relpath!r} cannot be read (row {bad.row}: "
                f"{bad.reason}, {bad.detail}); fix them and run the update again"
            )
        ids += docs.ids
        hashes += docs.hashes
        rows.append(docs.passthrough.add_column(0, ID, pa.array(docs.ids, pa.string())))
    if len(set(ids)) != len(ids):
        dup = Counter(ids).most_common(1)[0][0]
        raise SourceError(f"the update holds id {dup!r} more than once; ids must be unique")
    return _Incoming(ids, hashes, rows)


def _raw_batches(
    source: str | None,
    upserts: pa.Table | None,
    spec: DocumentSpec,
    format: Format | None,
    run: RunOptions,
) -> Iterator[tuple[str, Any]]:
    if upserts is not None:
        table = upserts.add_column(0, ROW, pa.array(range(upserts.num_rows), pa.int64()))
        yield "request", RawBatch(table)
    if source is not None:
        for split, raw in read_corpus(source, text_column=spec.text_column, format=format,
                                      storage_options=run.storage_options):  # fmt: skip
            yield split.file.relpath, raw


def _embed(
    fs: fsspec.AbstractFileSystem,
    root: str,
    index: str,
    incoming: _Incoming,
    todo: set[str],
    spec: DocumentSpec,
    fingerprint: ModelFingerprint,
    manifest: IndexManifest,
    run: RunOptions,
) -> tuple[np.ndarray, pa.Table]:
    """Embed the documents in `todo` with the index's model (resumable); their vectors
    (as the index stores them) and docs rows (id, text hash, passthrough)."""
    table = pa.concat_tables(incoming.rows, promote_options="permissive")
    table = table.filter(pa.array([i in todo for i in table.column(ID).to_pylist()]))
    digest = hashlib.sha256()
    for doc_id, h in sorted((i, h) for i, h in zip(incoming.ids, incoming.hashes, strict=True)
                            if i in todo):  # fmt: skip
        digest.update(f"{doc_id}\0{h}\n".encode())
    work = posixpath.join(root, UPDATES, digest.hexdigest()[:20])
    corpus, out = posixpath.join(work, "rows.parquet"), posixpath.join(work, "embedded")
    if not fs.exists(corpus):
        fs.makedirs(work, exist_ok=True)
        with fs.open(corpus + ".tmp", "wb") as fh:
            pq.write_table(table, fh)
        fs.mv(corpus + ".tmp", corpus)
    chunking = manifest.chunking  # changed and new documents are chunked as the index's were
    options = EmbedOptions(
        model=fingerprint.name, text_column=spec.text_column, id_column=ID,
        normalize=fingerprint.normalize, max_seq_length=fingerprint.max_seq_length,
        dims=fingerprint.dims,
        backend=backend_for(fingerprint), metric=manifest.metric,
        chunking="auto" if chunking else "none",
        chunk_tokens=chunking.get("chunk_tokens") if chunking else None,
        chunk_overlap=int(chunking.get("overlap", 0)) if chunking else 0,
        max_chunks=int(chunking.get("max_chunks", 10_000)) if chunking else 10_000,
    )  # fmt: skip
    url = fs.unstrip_protocol(work)
    embed_corpus(posixpath.join(url, "rows.parquet"), posixpath.join(url, "embedded"),
                 options=options, run=run)  # fmt: skip
    embedded = EmbeddingSet(fs.unstrip_protocol(out), storage_options=run.storage_options)
    fingerprint.require_compatible(
        embedded.fingerprint, what=f"the index {index!r}", other_what="the update's vectors"
    )
    rows = embedded.read_table()
    vectors = prepare_vectors(vectors_of(rows.column(VECTOR)), manifest.metric,
                              rows.column(ID).to_pylist())  # fmt: skip
    return vectors, rows.drop_columns([VECTOR])  # the vectors go to the vector files


def _write_version(
    fs: fsspec.AbstractFileSystem,
    version_path: str,
    staging: str,
    manifest: IndexManifest,
    remove: set[int],
    vectors: np.ndarray,
    rows: pa.Table | None,
    next_iid: int,
) -> tuple[IndexManifest, Drift | None]:
    """The new version's files in `staging`: every shard without `remove`, the new
    vectors added to the smallest shards (int64 ids from `next_iid`), the docs tables to
    match; returns its manifest (for the caller to write) and the drift figures."""
    fs.makedirs(staging, exist_ok=True)
    fs.copy(posixpath.join(version_path, TRAINED), posixpath.join(staging, TRAINED))
    shards = manifest.shards
    indexes = [read_index_file(fs, posixpath.join(version_path, s.file)) for s in shards]
    before = [imbalance(ix) for ix in indexes]
    # drift compares distances to the float quantizer: none for binary codes
    ivf = (
        not isinstance(indexes[0], BinaryIndex)
        and faiss.try_extract_index_ivf(indexes[0]) is not None
    )
    kept = kept_sample(fs, version_path, manifest, remove) if ivf and len(vectors) else None
    iids = np.arange(next_iid, next_iid + len(vectors), dtype=np.int64)
    removed = [int(ix.remove_ids(faiss.IDSelectorBatch(np.fromiter(remove, np.int64))))
               if remove else 0 for ix in indexes]  # fmt: skip
    target = _assign_to_shards([int(ix.ntotal) for ix in indexes], len(vectors))
    new_shards = []
    for s, (entry, ix) in enumerate(zip(shards, indexes, strict=True)):
        mine = np.flatnonzero(target == s)
        if not len(mine) and not removed[s]:  # untouched: the same files
            for name in (entry.file, entry.docs, entry.vectors, entry.lexical):
                if name is None:
                    continue
                fs.copy(posixpath.join(version_path, name), posixpath.join(staging, name))
            new_shards.append(entry)
            continue
        if len(mine):
            ix.add_with_ids(vectors[mine], iids[mine])
        write_index(ix, fs, posixpath.join(staging, entry.file))
        new_rows = rows.take(pa.array(mine, pa.int64())) if rows is not None else None
        keep = _write_docs(fs, version_path, staging, entry.docs, remove, new_rows, iids[mine])
        assert entry.vectors is not None and manifest.vectors is not None
        filter_vector_file(fs, posixpath.join(version_path, entry.vectors),
                           posixpath.join(staging, entry.vectors), manifest.vectors, keep,
                           vectors[mine])  # fmt: skip
        new_shards.append(replace(
            entry, count=int(ix.ntotal),
            sha256=file_sha256(fs, posixpath.join(staging, entry.file)),
            docs_sha256=file_sha256(fs, posixpath.join(staging, entry.docs)),
            vectors_sha256=file_sha256(fs, posixpath.join(staging, entry.vectors)),
        ))  # fmt: skip
    new = manifest.with_shards(new_shards, ntotal=sum(s.count for s in new_shards))
    drift = None if kept is None else measure_drift(indexes, vectors, kept, before)
    return new, drift


def _assign_to_shards(sizes: list[int], n: int) -> np.ndarray:
    """Shard of each new vector: fill the smallest shards first, keeping them even."""
    sizes = list(sizes)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        s = int(np.argmin(sizes))
        out[i] = s
        sizes[s] += 1
    return out


def _write_docs(
    fs: fsspec.AbstractFileSystem,
    version_path: str,
    staging: str,
    name: str,
    remove: set[int],
    new_rows: pa.Table | None,
    new_iids: np.ndarray,
) -> np.ndarray:
    """The shard's docs table without the removed rows, plus the new rows; returns which
    old rows it kept."""
    with fs.open(posixpath.join(version_path, name), "rb") as fh:
        old = pq.read_table(fh)
    keep = ~np.isin(old.column(IID).to_numpy(), np.fromiter(remove, np.int64))
    old = old.filter(pa.array(keep))
    table = old
    if new_rows is not None and new_rows.num_rows:
        added = new_rows.add_column(0, IID, pa.array(new_iids, pa.int64()))
        schema = fitted_schema(old.schema, added)
        kept, fitted = conform_table(old, schema), conform_table(added, schema)
        if kept is None or fitted is None:  # fitted_schema let only lossless casts through
            raise SourceError(
                f"the update's rows do not fit the docs table {name!r}; nothing was published"
            )
        table = pa.concat_tables([kept, fitted])
        if table.num_rows != old.num_rows + added.num_rows:
            raise SourceError(f"rows were lost rewriting {name!r}; nothing was published")
    with fs.open(posixpath.join(staging, name), "wb") as fh:
        pq.write_table(table, fh, row_group_size=8192)
    return keep
