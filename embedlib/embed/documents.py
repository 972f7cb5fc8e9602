"""From rows as read to documents to embed: ids, texts, content hashes, passthrough.

Null or blank texts are skipped and counted; rows whose id or text cannot be used are
quarantined with the reason. The same function runs in the scan and in the embed pass,
so both see exactly the same documents.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedlib.embed.corpus.read import FILE, ROW, QuarantineRecord, RawBatch
from embedlib.embed.images import (
    IMAGE,
    IMAGE_COLUMNS,
    THUMBNAIL,
    DecodedImage,
    ImageError,
    image_reader,
    load_image,
)
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
    every source column through. With `image_column`, the documents are the images that
    column holds (bytes, or paths relative to the corpus root or URLs), not texts.
    """

    text_column: str = "text"
    id_column: str | None = None
    columns: tuple[str, ...] | None = None
    generate_missing_ids: bool = False
    image_column: str | None = None
    thumbnails: bool = True  # image documents carry a thumbnail (the scan needs none)


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
    images: list[DecodedImage] | None = None  # an image corpus: the images to embed

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
    read_path: Callable[[str], bytes] | None = None,
) -> Documents:
    """Turn one batch of raw rows into documents; `drop_rows` are skipped as duplicates.
    `read_path` reads an image given by path (image corpora whose column holds paths)."""
    if spec.image_column is not None:
        return prepare_images(raw, spec, relpath=relpath, drop_rows=drop_rows, read_path=read_path)
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


def prepare_images(
    raw: RawBatch,
    spec: DocumentSpec,
    *,
    relpath: str,
    drop_rows: Collection[int] = (),
    read_path: Callable[[str], bytes] | None = None,
) -> Documents:
    """Rows whose `spec.image_column` holds an image (its bytes, or a path or URL) to
    documents: the decoded images, their content hashes (of the file's bytes), and as
    passthrough the other columns, the original bytes (`image`) and a thumbnail. An image
    that cannot be used is quarantined with its reason; a null one is skipped."""
    assert spec.image_column is not None
    table = raw.table
    skipped = Counter(raw.skipped)
    quarantined = list(raw.quarantined)
    rows = table.column(ROW).to_pylist() if ROW in table.column_names else []
    files = table.column(FILE).to_pylist() if FILE in table.column_names else [relpath] * len(rows)
    if rows and spec.image_column not in table.column_names:
        raise SourceError(
            f"image column {spec.image_column!r} is not in {relpath!r} (its columns: "
            f"{', '.join(c for c in table.column_names if c not in (ROW, FILE))}); name it "
            "with --image-column"
        )
    values = table.column(spec.image_column).to_pylist() if rows else []
    id_column = spec.id_column if spec.id_column in table.column_names else None
    if spec.id_column is not None and id_column is None and not spec.generate_missing_ids:
        ids_in: list[str | None] = [None] * len(rows)
    elif id_column is None:
        ids_in = [f"{relpath}:{r}" for r in rows]
    else:
        ids_in = _ids(table.column(id_column), id_column, relpath)
    reader = image_reader(read_path or _no_paths)
    keep: list[int] = []
    ids: list[str] = []
    images: list[DecodedImage] = []
    originals: list[bytes] = []
    for i, (row, value, doc_id, file) in enumerate(zip(rows, values, ids_in, files, strict=True)):
        if value is None:
            skipped["null_image"] += 1
            continue
        if doc_id is None:
            detail = f"no value in id column {spec.id_column!r}"
            quarantined.append(QuarantineRecord(file, row, "missing_id", detail, ""))
            continue
        if row in drop_rows:
            skipped["duplicate_id"] += 1
            continue
        try:
            data = reader(value) if isinstance(value, str) else bytes(value)
            decoded = load_image(data, thumbnail=spec.thumbnails)
        except ImageError as e:
            raw_value = value if isinstance(value, str) else f"<{len(value)} bytes>"
            quarantined.append(QuarantineRecord(file, row, e.reason, e.detail, raw_value[:500]))
            continue
        keep.append(i)
        ids.append(doc_id)
        images.append(decoded)
        originals.append(data)
    names = [c for c in table.column_names if c not in (ROW, FILE, id_column, spec.image_column)]
    if spec.columns is not None:
        names = [c for c in spec.columns if c in names]
    clash = sorted(set(names) & set(IMAGE_COLUMNS))
    if clash:
        raise SourceError(
            f"{relpath!r} has a column named {clash[0]!r}, which an image set keeps for the "
            f"image and its thumbnail; rename it, or leave it out with --columns"
        )
    kept = table.select(names).take(pa.array(keep, pa.int64()))
    passthrough = pa.table(
        {
            **{c: kept.column(c) for c in names},
            IMAGE: pa.array(originals, pa.binary()),
            THUMBNAIL: pa.array([d.thumbnail for d in images], pa.binary()),
        }
    )
    return Documents(
        rows=np.asarray([rows[i] for i in keep], dtype=np.int64),
        ids=ids,
        texts=[],
        hashes=[hashlib.blake2b(b, digest_size=16).hexdigest() for b in originals],
        passthrough=passthrough,
        source_columns=[c for c in table.column_names if c not in (ROW, FILE)],
        skipped=skipped,
        quarantined=quarantined,
        relpath=relpath,
        images=images,
    )


def _no_paths(path: str) -> bytes:
    raise ValueError("this corpus gives images by path, and no reader for paths was given")


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
