"""Read one split as Arrow batches. Malformed rows (bad UTF-8, bad JSON, broken CSV rows)
go to quarantine records with their position; a file that cannot be read at all raises
SourceError naming it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from embedlib.embed.corpus.discover import Format, discover
from embedlib.embed.corpus.plan import Split, plan_splits
from embedlib.exceptions import SourceError

ROW = "__row"
FILE = "__file"  # image splits: each row's file, relative to the corpus root
_RAW_LIMIT = 500
IMAGE_BATCH_ROWS = 32  # image files read (and held) at once


@dataclass(frozen=True)
class QuarantineRecord:
    """A row that could not be read, with where it came from and why."""

    file: str
    row: int | None  # 0-based row or line index in the file, when known
    reason: str
    detail: str
    raw: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "row": self.row,
            "reason": self.reason,
            "detail": self.detail,
            "raw": self.raw,
        }


@dataclass
class RawBatch:
    """Rows as read: `table` has the file-level row index in `__row` and the source columns."""

    table: pa.Table
    quarantined: list[QuarantineRecord] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def read_split(
    fs: fsspec.AbstractFileSystem,
    split: Split,
    *,
    batch_rows: int,
    text_column: str,
    binary_columns: tuple[str, ...] = (),
) -> Iterator[RawBatch]:
    """Yield the rows of `split` in batches of at most `batch_rows`.

    `text_column` names the column that plain-text lines are put in. `binary_columns`
    (CSV only) are read as bytes, so that bad UTF-8 in them quarantines one row instead
    of failing the file.
    """
    f = split.file
    if split.kind == "images":
        yield from _read_images(fs, split, batch_rows)
        return
    try:
        with fs.open(f.path, "rb", compression=f.compression) as fh:
            if f.format == "parquet":
                yield from _read_parquet(fh, split, batch_rows)
            elif f.format in ("csv", "tsv"):
                yield from _read_csv(fh, split, batch_rows, binary_columns)
            else:
                yield from _read_lines(fh, split, batch_rows, text_column)
    except SourceError:
        raise
    except (OSError, pa.ArrowException, EOFError, ValueError) as e:
        raise SourceError(
            f"cannot read {f.path!r} ({split.describe()}): {type(e).__name__}: {e}. Fix or "
            "remove the file and re-run the same command: committed splits are kept."
        ) from e


def read_corpus(
    source: str,
    *,
    text_column: str,
    format: Format | None = None,
    storage_options: dict[str, Any] | None = None,
    batch_rows: int = 8192,
) -> Iterator[tuple[Split, RawBatch]]:
    """Every batch of a whole corpus, in one process, in file order (for steps that
    read a corpus once in the driver: word2vec training, index updates)."""
    fs, files, _ = discover(source, format=format, storage_options=storage_options)
    for split in plan_splits(fs, files, split_rows=50_000):
        for raw in read_split(fs, split, batch_rows=batch_rows, text_column=text_column):
            yield split, raw


def _read_images(
    fs: fsspec.AbstractFileSystem, split: Split, batch_rows: int
) -> Iterator[RawBatch]:
    """Image files, one row each: `id` (the path relative to the corpus root), `image`
    (the file's bytes). A file that cannot be read is quarantined."""
    step = max(1, min(batch_rows, IMAGE_BATCH_ROWS))
    for offset in range(0, len(split.members), step):
        rows, files, data = [], [], []
        bad: list[QuarantineRecord] = []
        for n, f in enumerate(split.members[offset : offset + step], start=offset):
            try:
                content = fs.cat_file(f.path)
            except (OSError, ValueError) as e:
                bad.append(QuarantineRecord(f.relpath, 0, "unreadable_image",
                                            f"{type(e).__name__}: {e}", ""))  # fmt: skip
                continue
            rows.append(n)
            files.append(f.relpath)
            data.append(content)
        table = pa.table(
            {
                ROW: pa.array(rows, pa.int64()),
                FILE: pa.array(files, pa.string()),
                "id": pa.array(files, pa.string()),
                "image": pa.array(data, pa.binary()),
            }
        )
        yield RawBatch(table, quarantined=bad)


def _with_rows(table: pa.Table, first: int) -> pa.Table:
    return table.add_column(0, ROW, pa.array(range(first, first + table.num_rows), pa.int64()))


def _read_parquet(fh: IO[bytes], split: Split, batch_rows: int) -> Iterator[RawBatch]:
    pf = pq.ParquetFile(fh)
    row = split.first_row
    groups = list(range(split.start, split.stop)) if split.kind == "row_groups" else None
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups):
        table = pa.Table.from_batches([batch])
        yield RawBatch(_with_rows(table, row))
        row += table.num_rows


def _read_csv(
    fh: IO[bytes], split: Split, batch_rows: int, binary_columns: tuple[str, ...]
) -> Iterator[RawBatch]:
    bad: list[QuarantineRecord] = []

    def on_invalid(row: Any) -> str:
        bad.append(
            QuarantineRecord(
                file=split.file.relpath,
                row=None,  # records before it are counted by the parser, not by us
                reason="malformed_csv_row",
                detail=f"expected {row.expected_columns} columns, got {row.actual_columns}"
                + ("" if row.number is None else f" at line {row.number} of the file"),
                raw=row.text[:_RAW_LIMIT],
            )
        )
        return "skip"

    reader = pacsv.open_csv(
        fh,
        read_options=pacsv.ReadOptions(block_size=1 << 22, use_threads=False),
        parse_options=pacsv.ParseOptions(
            delimiter="\t" if split.file.format == "tsv" else ",",
            newlines_in_values=True,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.binary() for c in binary_columns},
        ),
    )
    row = 0
    for batch in reader:
        table = pa.Table.from_batches([batch])
        for offset in range(0, table.num_rows, batch_rows):
            part = table.slice(offset, batch_rows)
            yield RawBatch(_with_rows(part, row), quarantined=bad[:])
            bad.clear()
            row += part.num_rows
    if bad:
        yield RawBatch(_with_rows(pa.table({}), row).slice(0, 0), quarantined=bad[:])


def _lines(fh: IO[bytes], split: Split) -> Iterator[tuple[int, bytes]]:
    """(line index, line without its newline) for the split's lines."""
    if split.kind == "bytes":
        fh.seek(split.start)
        remaining = split.stop - split.start
    else:
        remaining = -1
    index = split.first_row
    for line in fh:
        if remaining >= 0:
            if remaining == 0:
                break
            remaining -= len(line)
        yield index, line.rstrip(b"\r\n")
        index += 1


def _read_lines(
    fh: IO[bytes], split: Split, batch_rows: int, text_column: str
) -> Iterator[RawBatch]:
    jsonl = split.file.format == "jsonl"
    rows: list[int] = []
    records: list[Any] = []
    batch = RawBatch(pa.table({}))
    for index, line in _lines(fh, split):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            batch.quarantined.append(_bad(split, index, "bad_utf8", str(e), line))
            continue
        if jsonl:
            if not text.strip():
                batch.skipped["blank_line"] += 1
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                batch.quarantined.append(_bad(split, index, "bad_json", str(e), line))
                continue
            if not isinstance(record, dict):
                detail = f"a JSON {type(record).__name__}, not an object"
                batch.quarantined.append(_bad(split, index, "not_an_object", detail, line))
                continue
            value = record.get(text_column)
            if value is not None and not isinstance(value, str):
                detail = f"{text_column!r} holds a JSON {type(value).__name__}, not a string"
                batch.quarantined.append(_bad(split, index, "text_not_string", detail, line))
                continue
            records.append(record)
        else:
            records.append(text)
        rows.append(index)
        if len(rows) >= batch_rows:
            yield _finish(batch, rows, records, jsonl, text_column, split)
            rows, records, batch = [], [], RawBatch(pa.table({}))
    if rows or batch.quarantined or batch.skipped:
        yield _finish(batch, rows, records, jsonl, text_column, split)


def _as_text(value: Any) -> str | None:
    """A field with mixed JSON types passes through as text: strings as they are, other
    values as their JSON, so no row is lost."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _bad(split: Split, index: int, reason: str, detail: str, line: bytes) -> QuarantineRecord:
    raw = line[:_RAW_LIMIT].decode("utf-8", errors="backslashreplace")
    return QuarantineRecord(split.file.relpath, index, reason, detail, raw)


def _finish(
    batch: RawBatch,
    rows: list[int],
    records: list[Any],
    jsonl: bool,
    text_column: str,
    split: Split,
) -> RawBatch:
    if jsonl:
        keys: dict[str, None] = {}
        for r in records:
            keys.update(dict.fromkeys(r))
        columns: dict[str, pa.Array] = {ROW: pa.array(rows, pa.int64())}
        for k in keys:
            values = [r.get(k) for r in records]
            try:
                columns[k] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                columns[k] = pa.array([_as_text(v) for v in values], pa.string())
        batch.table = pa.table(columns)
    else:
        batch.table = pa.table(
            {ROW: pa.array(rows, pa.int64()), text_column: pa.array(records, pa.string())}
        )
    return batch
