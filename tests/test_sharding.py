"""Shard planning covers every row exactly once, for any sizes (property-based)."""

from __future__ import annotations

import io
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from embedlib.embed.corpus import discover, plan_splits, read_split
from embedlib.embed.corpus.plan import plan_digest

FS = fsspec.filesystem("memory")
line_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12
)


def _rows_read(url: str, split_rows: int, batch_rows: int = 7) -> list[tuple[int, str]]:
    fs, files, _ = discover(url)
    shards = plan_splits(fs, files, split_rows=split_rows)
    assert [s.index for s in shards] == list(range(len(shards)))
    out: list[tuple[int, str]] = []
    for shard in shards:
        for batch in read_split(fs, shard, batch_rows=batch_rows, text_column="text"):
            out.extend(
                zip(
                    batch.table.column("__row").to_pylist(),
                    batch.table.column("text").to_pylist(),
                    strict=True,
                )
            )
    return out


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(line_text, max_size=60),
    split_rows=st.integers(1, 25),
    crlf=st.booleans(),
    trailing_newline=st.booleans(),
)
def test_text_shards_cover_every_line_once(lines, split_rows, crlf, trailing_newline):
    sep = "\r\n" if crlf else "\n"
    data = sep.join(lines) + (sep if trailing_newline and lines else "")
    path = f"/prop/{uuid.uuid4().hex}/corpus.txt"
    FS.pipe(path, data.encode())
    expected = data.split(sep)
    if expected[-1] == "":
        expected.pop()  # a final newline ends the last line; it does not start a new one
    got = _rows_read(f"memory://{path}", split_rows)
    assert [r for r, _ in got] == list(range(len(expected)))
    assert [t for _, t in got] == expected


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), row_group_size=st.integers(1, 80), split_rows=st.integers(1, 200))
def test_parquet_shards_cover_every_row_once(n, row_group_size, split_rows):
    buf = io.BytesIO()
    pq.write_table(
        pa.table({"text": [f"row {i}" for i in range(n)]}), buf, row_group_size=row_group_size
    )
    path = f"/prop/{uuid.uuid4().hex}/corpus.parquet"
    FS.pipe(path, buf.getvalue())
    got = _rows_read(f"memory://{path}", split_rows)
    assert got == [(i, f"row {i}") for i in range(n)]


def test_plan_is_deterministic_and_splits_one_big_file():
    lines = "".join(f"line {i}\n" for i in range(1000))
    path = f"/plan/{uuid.uuid4().hex}/big.jsonl"
    FS.pipe(path, "".join(f'{{"text": "{t}"}}\n' for t in lines.splitlines()).encode())
    fs, files, _ = discover(f"memory://{path}")
    a = plan_splits(fs, files, split_rows=100)
    b = plan_splits(fs, files, split_rows=100)
    assert len(a) == 10 and plan_digest(a) == plan_digest(b)
    assert all(s.kind == "bytes" for s in a)
    assert [s.first_row for s in a] == list(range(0, 1000, 100))


def test_compressed_and_csv_files_are_read_whole():
    root = f"/plan/{uuid.uuid4().hex}"
    FS.pipe(f"{root}/a.csv", b"text\n" + b"".join(b"x%d\n" % i for i in range(50)))
    import gzip

    FS.pipe(f"{root}/b.txt.gz", gzip.compress(b"".join(b"y%d\n" % i for i in range(50))))
    fs, files, _ = discover(f"memory://{root}")
    shards = plan_splits(fs, files, split_rows=10)
    assert [(s.file.relpath, s.kind) for s in shards] == [("a.csv", "whole"), ("b.txt.gz", "whole")]
