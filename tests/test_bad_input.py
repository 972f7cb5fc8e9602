"""Bad input gets a clear error that says what to do, and loses nothing already written."""

from __future__ import annotations

import json

import pytest

from embedlib import (
    DuplicateIdError,
    EmbeddingSet,
    EmbedOptions,
    IncompatibleOutputError,
    MissingColumnError,
    RunOptions,
    SourceError,
    StorageError,
    embed_corpus,
)
from embedlib.sets.embedding_set import COMMITS
from tests import corpora

LOCAL = RunOptions(runner="local", progress=False)


def _jsonl(fs, path: str, rows: list) -> None:
    fs.pipe(
        path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    )


def test_missing_text_column_names_it_and_the_columns_before_encoding(memfs):
    fs, url = memfs
    corpora.write(fs, f"{url}/c.parquet", corpora.to_bytes(corpora.table(10), "parquet"))
    with pytest.raises(MissingColumnError) as e:
        embed_corpus(
            f"{url}/c.parquet", f"{url}/out", options=EmbedOptions(text_column="nope"), run=LOCAL
        )
    msg = str(e.value)
    assert "'nope'" in msg and "'body'" in msg and "'doc_id'" in msg and "--text-column" in msg
    assert not fs.exists(f"{url}/out/{COMMITS}")  # nothing was encoded


def test_missing_id_column(memfs):
    fs, url = memfs
    corpora.write(fs, f"{url}/c.csv", corpora.to_bytes(corpora.table(10), "csv"))
    with pytest.raises(MissingColumnError, match=r"'uid'.*'doc_id'"):
        embed_corpus(
            f"{url}/c.csv",
            f"{url}/out",
            options=EmbedOptions(text_column="body", id_column="uid"),
            run=LOCAL,
        )


def test_null_empty_and_blank_texts_are_skipped_and_counted(memfs):
    fs, url = memfs
    rows = [
        {"id": "a", "text": "a real document"},
        {"id": "b", "text": None},
        {"id": "c", "text": ""},
        {"id": "d", "text": "  \t "},
        {"id": "e"},
        {"id": "f", "text": "another document"},
    ]
    _jsonl(fs, f"{url}/c.jsonl", [*rows[:3], "", *rows[3:]])
    report = embed_corpus(f"{url}/c.jsonl", f"{url}/out", run=LOCAL)
    assert report.documents == 2
    assert report.skipped == {"null_text": 2, "empty_text": 2, "blank_line": 1}
    eset = EmbeddingSet(f"{url}/out")
    assert eset.read_table(["id"]).column("id").to_pylist() == ["a", "f"]
    assert eset.manifest.counts["skipped"] == {"null_text": 2, "empty_text": 2, "blank_line": 1}
    assert eset.manifest.counts["rows_read"] == 7


def test_duplicate_ids_fail_naming_them_or_keep_first(memfs):
    fs, url = memfs
    rows = [{"id": i, "text": f"text {n}"} for n, i in enumerate(["x", "y", "x", "z", "y", "x"])]
    _jsonl(fs, f"{url}/c.jsonl", rows)
    with pytest.raises(
        DuplicateIdError, match=r"3 rows repeat an id seen before, e\.g\. 'x', 'y'.*keep-first"
    ):
        embed_corpus(f"{url}/c.jsonl", f"{url}/out", options=EmbedOptions(split_rows=2), run=LOCAL)
    assert not fs.exists(f"{url}/out/{COMMITS}")
    embed_corpus(
        f"{url}/c.jsonl",
        f"{url}/out2",
        options=EmbedOptions(split_rows=2, on_duplicate="keep-first"),
        run=LOCAL,
    )
    t = EmbeddingSet(f"{url}/out2").read_table(["id", "text"])
    assert t.column("id").to_pylist() == ["x", "y", "z"]
    assert t.column("text").to_pylist() == ["text 0", "text 1", "text 3"]


def test_malformed_rows_are_quarantined_with_reason_and_position(memfs):
    fs, url = memfs
    lines = [
        b'{"id": "1", "text": "good one"}',
        b'{"id": "2", "text": "broken json',
        b'{"id": "3", "text": "bad \xff utf8"}',
        b"[1, 2, 3]",
        b'{"id": "5", "text": 42}',
        b'{"text": "no id here"}',
        b'{"id": "7", "text": "good two"}',
    ]
    fs.pipe(f"{url}/c.jsonl", b"\n".join(lines) + b"\n")
    fs.pipe(
        f"{url}/d.csv", b'id,text\n10,fine\n20,"bad \xfe utf8"\n30,too,many,fields\n40,also fine\n'
    )
    report = embed_corpus(f"{url}", f"{url}/out", options=EmbedOptions(id_column="id"), run=LOCAL)
    assert report.documents == 4 and report.quarantined == 7
    records = []
    for p in sorted(fs.glob(f"{url}/out/_quarantine/*.jsonl")):
        records += [json.loads(x) for x in fs.cat(p).decode().splitlines()]
    got = {(r["file"], r["row"], r["reason"]) for r in records}
    assert {
        ("c.jsonl", 1, "bad_json"),
        ("c.jsonl", 2, "bad_utf8"),
        ("c.jsonl", 3, "not_an_object"),
        ("c.jsonl", 4, "text_not_string"),
        ("c.jsonl", 5, "missing_id"),
        ("d.csv", 1, "bad_utf8"),
    } <= got
    assert any(
        r["reason"] == "malformed_csv_row" and "too,many,fields" in r["raw"] for r in records
    )
    ids = EmbeddingSet(f"{url}/out").read_table(["id"]).column("id").to_pylist()
    assert sorted(ids) == ["1", "10", "40", "7"]


def test_corrupt_file_fails_naming_it(memfs):
    fs, url = memfs
    corpora.write(fs, f"{url}/a.jsonl", corpora.to_bytes(corpora.table(5), "jsonl"))
    fs.pipe(f"{url}/b.parquet", b"PAR1 this is not a parquet file")
    with pytest.raises(SourceError, match=r"b\.parquet"):
        embed_corpus(
            url,
            f"{url}/out",
            options=EmbedOptions(text_column="body", id_column="doc_id"),
            run=LOCAL,
        )


def test_truncated_texts_are_counted(memfs):
    fs, url = memfs
    texts = [*corpora.sentences(10, seed=5, min_words=40, max_words=60), "short one"]
    _jsonl(fs, f"{url}/c.jsonl", [{"text": t} for t in texts])
    report = embed_corpus(
        f"{url}/c.jsonl",
        f"{url}/out",
        options=EmbedOptions(max_seq_length=16, chunking="none"),
        run=LOCAL,
    )
    assert report.truncated == 10 and report.chunks == 11
    assert EmbeddingSet(f"{url}/out").fingerprint.max_seq_length == 16
    # chunked (the default), nothing is cut off: every long text becomes several chunks
    report = embed_corpus(
        f"{url}/c.jsonl", f"{url}/chunked", options=EmbedOptions(max_seq_length=16), run=LOCAL
    )
    assert report.truncated == 0 and report.documents == 11 and report.chunks > 30


def test_changed_options_are_refused_unless_overwrite(memfs):
    fs, url = memfs
    _jsonl(fs, f"{url}/c.jsonl", [{"text": "one"}, {"text": "two"}])
    embed_corpus(f"{url}/c.jsonl", f"{url}/out", run=LOCAL)
    with pytest.raises(
        IncompatibleOutputError, match=r"normalize: was True, now False.*--overwrite"
    ):
        embed_corpus(
            f"{url}/c.jsonl", f"{url}/out", options=EmbedOptions(normalize=False), run=LOCAL
        )
    # workers and batch size do not change the output: resuming with others is fine
    embed_corpus(
        f"{url}/c.jsonl", f"{url}/out", run=RunOptions(runner="local", batch_size=7, progress=False)
    )
    _jsonl(fs, f"{url}/c.jsonl", [{"text": "one"}, {"text": "two"}, {"text": "three"}])
    with pytest.raises(IncompatibleOutputError, match="source changed"):
        embed_corpus(f"{url}/c.jsonl", f"{url}/out", run=LOCAL)
    report = embed_corpus(
        f"{url}/c.jsonl",
        f"{url}/out",
        run=RunOptions(runner="local", overwrite=True, progress=False),
    )
    assert report.documents == 3


def test_output_holding_other_files_is_refused(memfs):
    fs, url = memfs
    _jsonl(fs, f"{url}/c.jsonl", [{"text": "one"}])
    fs.pipe(f"{url}/out/precious.txt", b"keep me")
    with pytest.raises(IncompatibleOutputError, match="not empty"):
        embed_corpus(f"{url}/c.jsonl", f"{url}/out", run=LOCAL)
    assert fs.cat(f"{url}/out/precious.txt") == b"keep me"


def test_missing_source_and_memory_on_ray(memfs):
    fs, url = memfs
    with pytest.raises(SourceError, match="does not exist"):
        embed_corpus(f"{url}/nothing.jsonl", f"{url}/out", run=LOCAL)
    _jsonl(fs, f"{url}/c.jsonl", [{"text": "one"}])
    with pytest.raises(StorageError, match="Ray workers cannot see"):
        embed_corpus(f"{url}/c.jsonl", f"{url}/out", run=RunOptions(runner="ray", progress=False))
    # left to choose, a job on memory:// runs in this process
    report = embed_corpus(f"{url}/c.jsonl", f"{url}/out", run=RunOptions(progress=False))
    assert report.documents == 1 and report.ran.startswith("in this process: memory://")
