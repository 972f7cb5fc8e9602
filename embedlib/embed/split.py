"""The work done on one split, with no Ray in it: scan (validate, count, hash ids) and
embed (read, encode, write an attempt file). Runners call these locally or on Ray."""

from __future__ import annotations

import json
import posixpath
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

import fsspec
import numpy as np

from embedlib.embed.chunking import ChunkOptions, chunk_documents
from embedlib.embed.corpus.plan import Split
from embedlib.embed.corpus.read import IMAGE_BATCH_ROWS, QuarantineRecord, read_split
from embedlib.embed.documents import Documents, DocumentSpec, id_hashes, prepare
from embedlib.models.encoders import TextEncoder
from embedlib.sets.embedding_set import ATTEMPTS, PartFile, PartWriter, join


@dataclass
class SplitScan:
    """What a split holds, found without encoding."""

    index: int
    columns: list[str]
    rows_read: int
    documents: int
    skipped: Counter[str]
    quarantined: int
    id_hashes: np.ndarray  # uint64, one per document, in row order
    id_rows: np.ndarray  # int64 file-level row of each document


@dataclass
class SplitResult:
    """An embedded split, written to an attempt file that the driver commits."""

    index: int
    attempt: str | None  # attempt Parquet file; None when no document survived
    file: PartFile | None
    quarantine: str | None  # attempt quarantine file, when rows were quarantined
    rows_read: int
    documents: int
    skipped: Counter[str]
    quarantined: int
    truncated: int
    seconds: float
    node: str = field(default_factory=socket.gethostname)
    chunks: int = 0  # rows written (one per document without chunking)
    tokens: int = 0  # tokens encoded


@dataclass(frozen=True)
class SplitContext:
    """Everything a worker needs besides the split and the model."""

    fs_in: fsspec.AbstractFileSystem
    fs_out: fsspec.AbstractFileSystem
    out_path: str
    spec: DocumentSpec
    read_batch_rows: int
    dtype: str
    chunking: ChunkOptions | None = None  # None: texts truncated at the model's window


def iter_documents(
    fs: fsspec.AbstractFileSystem,
    split: Split,
    spec: DocumentSpec,
    *,
    batch_rows: int,
    drop_rows: Collection[int] = (),
) -> Iterator[tuple[int, Documents]]:
    """(rows read, documents) for each batch of `split`. The text column of a CSV is read
    as bytes, so bad UTF-8 quarantines one row instead of failing the file. Images are
    read a few at a time; one given by path is read relative to the corpus root."""
    if spec.image_column is not None:
        batch_rows = min(batch_rows, IMAGE_BATCH_ROWS)
    read_path = _path_reader(fs, split)
    for raw in read_split(
        fs,
        split,
        batch_rows=batch_rows,
        text_column=spec.text_column,
        binary_columns=(spec.text_column,),
    ):
        docs = prepare(
            raw, spec, relpath=split.file.relpath, drop_rows=drop_rows, read_path=read_path
        )
        yield raw.table.num_rows + len(raw.quarantined) + sum(raw.skipped.values()), docs


def _path_reader(fs: fsspec.AbstractFileSystem, split: Split) -> Callable[[str], bytes]:
    """Reads a path relative to the corpus root (the folder `split.file.relpath` is
    relative to) on the corpus's filesystem, or a URL on its own."""
    root = split.file.path[: len(split.file.path) - len(split.file.relpath)]

    def read(path: str) -> bytes:
        if "://" in path:
            with fsspec.open(path, "rb") as fh:
                data: bytes = fh.read()
                return data
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError("an image path is relative to the corpus and stays inside it")
        return bytes(fs.cat_file(posixpath.join(root, path)))

    return read


def scan_split(split: Split, ctx: SplitContext) -> SplitScan:
    """Read `split` once to learn its columns, counts and document ids."""
    columns: dict[str, None] = {}
    rows_read = 0
    skipped: Counter[str] = Counter()
    quarantined = 0
    hashes: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for n, docs in iter_documents(ctx.fs_in, split, ctx.spec, batch_rows=ctx.read_batch_rows):
        columns.update(dict.fromkeys(docs.source_columns))
        rows_read += n
        skipped.update(docs.skipped)
        quarantined += len(docs.quarantined)
        hashes.append(id_hashes(docs.ids))
        rows.append(docs.rows)
    return SplitScan(
        index=split.index,
        columns=list(columns),
        rows_read=rows_read,
        documents=int(sum(len(h) for h in hashes)),
        skipped=skipped,
        quarantined=quarantined,
        id_hashes=np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
        id_rows=np.concatenate(rows) if rows else np.zeros(0, np.int64),
    )


def embed_split(
    split: Split,
    ctx: SplitContext,
    encoder: TextEncoder,
    *,
    drop_rows: Collection[int] = (),
    node: str | None = None,
) -> SplitResult:
    """Read, encode and write `split` to a fresh attempt file under `_attempts/`."""
    start = time.perf_counter()
    attempt_base = join(ctx.out_path, ATTEMPTS, f"{split.name}.{uuid.uuid4().hex}")
    ctx.fs_out.makedirs(join(ctx.out_path, ATTEMPTS), exist_ok=True)
    writer = PartWriter(ctx.fs_out, f"{attempt_base}.parquet", dtype=ctx.dtype)
    drop = set(drop_rows)
    rows_read = documents = chunks = truncated = 0
    tokens_before = encoder.tokens_encoded
    skipped: Counter[str] = Counter()
    bad: list[QuarantineRecord] = []
    for n, docs in iter_documents(
        ctx.fs_in, split, ctx.spec, batch_rows=ctx.read_batch_rows, drop_rows=drop
    ):
        rows_read += n
        skipped.update(docs.skipped)
        documents += len(docs)
        if ctx.chunking is not None and docs.images is None:
            refused = len(docs.quarantined)
            docs = chunk_documents(docs, encoder.chunker(ctx.chunking), ctx.spec.text_column)
            documents -= len(docs.quarantined) - refused
        bad.extend(docs.quarantined)
        if docs.images is not None:
            vectors, cut = encoder.encode_images([d.image for d in docs.images]), 0
        else:
            vectors, cut = encoder.encode(docs.texts)
        truncated += cut
        chunks += len(docs)
        writer.write(docs, vectors)
    info = writer.close()
    quarantine = None
    if bad:
        quarantine = f"{attempt_base}.quarantine.jsonl"
        with ctx.fs_out.open(quarantine, "w") as fh:
            for record in bad:
                fh.write(json.dumps(record.to_dict()) + "\n")
    return SplitResult(
        index=split.index,
        attempt=f"{attempt_base}.parquet" if info else None,
        file=info,
        quarantine=quarantine,
        rows_read=rows_read,
        documents=documents,
        skipped=skipped,
        quarantined=len(bad),
        truncated=truncated,
        seconds=time.perf_counter() - start,
        node=node or socket.gethostname(),
        chunks=chunks,
        tokens=encoder.tokens_encoded - tokens_before,
    )
