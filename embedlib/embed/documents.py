"""From rows as read to documents to embed: ids, texts, content hashes, passthrough.

Null or blank texts are skipped and counted; rows whose id or text cannot be used are
quarantined with the reason. The same function runs in the scan and in the embed pass,
so both see exactly the same documents.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedlib.embed.corpus.read import ROW, QuarantineRecord, RawBatch
from embedlib.exceptions import SourceError

ID = "id"
VECTOR = "vector"
TEXT_HASH = "text_hash"
RESERVED_COLUMNS = (ID, VECTOR, TEXT_HASH)
# the rows of a chunked embedding set: the chunk's number and its character span
CHUNK, CHUNK_START, CHUNK_END = "chunk", "chunk_start", "chunk_end"
CHUNK_COLUMNS = (CHUNK, CHUNK_START, CHUNK_END)


@dataclass(frozen=True)
class DocumentSpec:
    """Which columns hold the text and the id, and which columns pass through.

    `id_column=None` makes ids from the file's relative path and row (`path:row`). With
    `generate_missing_ids`, a batch without `id_column` gets generated ids too (the scan
    uses this to find out whether every file has an id column). `columns=None` passes
    every source column through.
    """

    text_column: str = "text"
    id_column: str | None = None
    columns: tuple[str, ...] | None = None
    generate_missing_ids: bool = False


@dataclass
class Documents:
    rows: np.ndarray  # file-level row index of each document
    ids: list[str]
    texts: list[str]
    hashes: list[str]
    passthrough: pa.Table
    source_columns: list[str] = field(default_factory=list)  # every column the batch had
    skipped: Counter[str] = field(default_factory=Counter)
    quarantined: list[QuarantineRecord] = field(default_factory=list)
    relpath: str = ""  # the file they were read from, relative to the corpus root

    def __len__(self) -> int:
        return len(self.ids)


def text_hash(text: str) -> str:
    """The content hash stored with each document (BLAKE2b, 128 bits, hex)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit hashes of ids, for duplicate detection without holding the strings."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
            for i in ids
        ),
        dtype=np.uint64,
        count=len(ids),
    )


def prepare(
    raw: RawBatch,
    spec: DocumentSpec,
    *,
    relpath: str,
    drop_rows: Collection[int] = (),
) -> Documents:
    """Turn one batch of raw rows into documents; `drop_rows` are skipped as duplicates."""
    table = raw.table
    skipped = Counter(raw.skipped)
    quarantined = list(raw.quarantined)
    rows = table.column(ROW).to_pylist() if ROW in table.column_names else []
    texts_in = _texts(table, spec.text_column, len(rows))
    id_column = spec.id_column if spec.id_column in table.column_names else None
    if spec.id_column is not None and id_column is None and not spec.generate_missing_ids:
        ids_in: list[str | None] = [None] * len(rows)
    elif id_column is None:
        ids_in = [f"{relpath}:{r}" for r in rows]
    else:
        ids_in = _ids(table.column(id_column), id_column, relpath)
    keep: list[int] = []
    texts: list[str] = []
    ids: list[str] = []
    for i, (row, text, doc_id) in enumerate(zip(rows, texts_in, ids_in, strict=True)):
        if isinstance(text, bytes):
            data = text
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raw_text = data[:500].decode("utf-8", errors="backslashreplace")
                quarantined.append(QuarantineRecord(relpath, row, "bad_utf8", str(e), raw_text))
                continue
        if text is None:
            skipped["null_text"] += 1
            continue
        if not text.strip():
            skipped["empty_text"] += 1
            continue
        if doc_id is None:
            detail = f"no value in id column {spec.id_column!r}"
            quarantined.append(QuarantineRecord(relpath, row, "missing_id", detail, text[:500]))
            continue
        if row in drop_rows:
            skipped["duplicate_id"] += 1
            continue
        keep.append(i)
        texts.append(text)
        ids.append(doc_id)
    passthrough = _passthrough(table, spec, id_column).take(pa.array(keep, pa.int64()))
    if spec.text_column in passthrough.column_names:
        idx = passthrough.column_names.index(spec.text_column)
        passthrough = passthrough.set_column(idx, spec.text_column, pa.array(texts, pa.string()))
    return Documents(
        rows=np.asarray([rows[i] for i in keep], dtype=np.int64),
        ids=ids,
        texts=texts,
        hashes=[text_hash(t) for t in texts],
        passthrough=passthrough,
        source_columns=[c for c in table.column_names if c != ROW],
        skipped=skipped,
        quarantined=quarantined,
        relpath=relpath,
    )


def _texts(table: pa.Table, column: str, n: int) -> list[str | bytes | None]:
    if column not in table.column_names:
        return [None] * n
    col = table.column(column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)) and not (
        pa.types.is_binary(col.type)
        or pa.types.is_large_binary(col.type)
        or pa.types.is_null(col.type)
    ):
        raise SourceError(
            f"text column {column!r} has type {col.type}; it must hold strings. Name the "
            "right column with --text-column."
        )
    return col.to_pylist()


def _ids(col: pa.ChunkedArray, name: str, relpath: str) -> list[str | None]:
    if pa.types.is_null(col.type):
        return [None] * len(col)
    if pa.types.is_integer(col.type) or pa.types.is_binary(col.type):
        col = pc.cast(col, pa.string())
    elif not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise SourceError(
            f"id column {name!r} in {relpath!r} has type {col.type}; ids must be strings or "
            "integers. Name another column with --id-column, or leave it out to generate ids."
        )
    return col.to_pylist()


def _passthrough(table: pa.Table, spec: DocumentSpec, id_column: str | None) -> pa.Table:
    names = [c for c in table.column_names if c not in (ROW, id_column)]
    if spec.columns is not None:
        names = [c for c in spec.columns if c in table.column_names and c != id_column]
    return table.select(names)
