"""The embedding job in-process (no Ray) on memory://: formats, vectors, manifest."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import EmbeddingSet, EmbedOptions, RunOptions, embed_corpus
from embedlib.embed.documents import text_hash
from tests import corpora

LOCAL = RunOptions(runner="local", progress=False)
FORMATS = ["parquet", "jsonl", "csv", "tsv", "text"]


def _embed(src: str, out: str, **opts) -> EmbeddingSet:
    embed_corpus(src, out, options=EmbedOptions(**opts), run=LOCAL)
    return EmbeddingSet(out)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_documents(memfs, fmt, gz, st_model):
    fs, url = memfs
    t = corpora.table(40, seed=1)
    corpora.write(
        fs,
        f"{url}/in/corpus.{corpora.EXTENSION[fmt]}",
        corpora.to_bytes(t, fmt, row_group_size=8),
        gz=gz,
    )
    text_column = "text" if fmt == "text" else "body"
    id_column = None if fmt == "text" else "doc_id"
    eset = _embed(
        f"{url}/in", f"{url}/out", text_column=text_column, id_column=id_column, split_rows=16
    )
    got = eset.read_table()
    texts = got.column(text_column).to_pylist()
    assert texts == t.column("body").to_pylist()
    if id_column:
        assert got.column("id").to_pylist() == t.column("doc_id").to_pylist()
        assert got.column("lang").to_pylist() == t.column("lang").to_pylist()
        assert [str(y) for y in got.column("year").to_pylist()] == [
            str(y) for y in t.column("year").to_pylist()
        ]
    else:
        name = "corpus.txt.gz" if gz else "corpus.txt"
        assert got.column("id").to_pylist() == [f"{name}:{i}" for i in range(40)]
    assert got.column("text_hash").to_pylist() == [text_hash(x) for x in texts]
    _, vectors = eset.read_vectors()
    reference = st_model.encode(texts, normalize_embeddings=True)
    assert (vectors * reference).sum(1).min() >= 0.9999


def test_vectors_match_sentence_transformers_and_manifest_is_complete(memfs, st_model):
    fs, url = memfs
    texts = corpora.sentences(150, seed=3, max_words=80)
    corpora.write(
        fs,
        f"{url}/c.parquet",
        corpora.to_bytes(corpora.table(150, seed=3), "parquet", row_group_size=20),
    )
    eset = _embed(
        f"{url}/c.parquet", f"{url}/out", text_column="body", id_column="doc_id", split_rows=40
    )
    ids, vectors = eset.read_vectors()
    t = corpora.table(150, seed=3)
    by_id = dict(zip(t.column("doc_id").to_pylist(), t.column("body").to_pylist(), strict=True))
    reference = st_model.encode([by_id[i] for i in ids], normalize_embeddings=True)
    assert vectors.dtype == np.float32 and vectors.shape == (150, 384)
    assert (vectors * reference).sum(1).min() >= 0.9999
    assert len(texts) == 150
    m = eset.manifest
    assert m.dim == 384 and m.model.normalize is True and m.metric == "cosine"
    assert m.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(m.model.weights_sha256) == 64
    assert m.documents == 150 and sum(p.rows for p in m.parts) == 150
    assert len(m.parts) == 4  # 150 rows, row groups of 20, splits of >= 40 rows
    for part in m.parts:
        assert fs.cat(f"{url}/out/{part.file}") and part.sha256 and len(part.sha256) == 64
    assert m.source["files"] == [
        {"path": "c.parquet", "format": "parquet", "bytes": fs.size(f"{url}/c.parquet")}
    ]
    # only committed parts and the manifest at the top level
    top = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{url}/out", detail=False))
    assert [p for p in top if not p.startswith("_")] == [
        "manifest.json",
        *[p.file for p in m.parts],
    ]


def test_generated_ids_are_stable_across_urls(memfs):
    fs, url = memfs
    data = corpora.to_bytes(corpora.table(10), "text")
    corpora.write(fs, f"{url}/a/sub/x.txt", data)
    corpora.write(fs, f"{url}/b/sub/x.txt", data)
    a = _embed(f"{url}/a", f"{url}/oa").read_table(["id"]).column("id").to_pylist()
    b = _embed(f"{url}/b", f"{url}/ob").read_table(["id"]).column("id").to_pylist()
    assert a == b == [f"sub/x.txt:{i}" for i in range(10)]


def test_columns_option_and_float16(memfs):
    fs, url = memfs
    corpora.write(fs, f"{url}/c.jsonl", corpora.to_bytes(corpora.table(20), "jsonl"))
    eset = _embed(
        f"{url}/c.jsonl",
        f"{url}/out",
        text_column="body",
        id_column="doc_id",
        columns=("lang",),
        dtype="float16",
    )
    schema = pq.read_schema(fs.open(f"{url}/out/part-00000.parquet"))
    assert schema.names == [
        "id",
        "vector",
        "text_hash",
        "lang",
        "chunk",
        "chunk_start",
        "chunk_end",
    ]
    vtype = schema.field("vector").type
    assert vtype.value_type == pa.float16() and vtype.list_size == 384
    _, v = eset.read_vectors()
    assert v.dtype == np.float32 and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-2)
    assert eset.text_column is None  # the text was not kept


def test_glob_source(memfs):
    fs, url = memfs
    for name in ("a.jsonl", "b.jsonl", "c.csv"):
        fmt = "csv" if name.endswith("csv") else "jsonl"
        corpora.write(
            fs, f"{url}/in/{name}", corpora.to_bytes(corpora.table(5, seed=ord(name[0])), fmt)
        )
    eset = _embed(
        f"{url}/in/*.jsonl",
        f"{url}/out",
        text_column="body",
        id_column="doc_id",
        on_duplicate="keep-first",
    )
    manifest = json.loads(fs.cat(f"{url}/out/manifest.json"))
    assert [f["path"] for f in manifest["source"]["files"]] == ["a.jsonl", "b.jsonl"]
    # ids d0..d4 are in both files: the second file's rows are skipped as duplicates
    assert len(eset) == 5 and manifest["counts"]["skipped"] == {"duplicate_id": 5}
    a_texts = corpora.table(5, seed=ord("a")).column("body").to_pylist()
    assert eset.read_table(["body"]).column("body").to_pylist() == a_texts


def test_a_model_given_as_a_local_path(memfs, tmp_path, st_model):
    fs, url = memfs
    st_model.save(str(tmp_path / "model"))
    corpora.write(fs, f"{url}/c.jsonl", corpora.to_bytes(corpora.table(12), "jsonl"))
    a = _embed(f"{url}/c.jsonl", f"{url}/a", text_column="body", model=str(tmp_path / "model"))
    b = _embed(f"{url}/c.jsonl", f"{url}/b", text_column="body")
    assert a.fingerprint.name == str(tmp_path / "model")
    assert a.fingerprint.differences(b.fingerprint) == {}  # same weights: comparable vectors
    assert np.allclose(a.read_vectors()[1], b.read_vectors()[1], atol=1e-6)


def test_resume_with_other_model_weights_is_refused(memfs, monkeypatch):
    import embedlib.embed.job as embed_job
    from embedlib import IncompatibleOutputError

    fs, url = memfs
    corpora.write(fs, f"{url}/c.jsonl", corpora.to_bytes(corpora.table(30), "jsonl"))
    opts = EmbedOptions(text_column="body", split_rows=10)
    real_commit = embed_job.commit_split

    def crash_after_one(*args, **kwargs):
        monkeypatch.setattr(embed_job, "commit_split", _raise)
        return real_commit(*args, **kwargs)

    def _raise(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(embed_job, "commit_split", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(f"{url}/c.jsonl", f"{url}/out", options=opts, run=LOCAL)
    monkeypatch.setattr(embed_job, "commit_split", real_commit)
    job = json.loads(fs.cat(f"{url}/out/_job.json"))
    job["fingerprint"]["weights_sha256"] = "0" * 64  # as if the model changed on disk
    fs.pipe(f"{url}/out/_job.json", json.dumps(job).encode())
    with pytest.raises(IncompatibleOutputError, match=r"weights_sha256: '0000.*--overwrite"):
        embed_corpus(f"{url}/c.jsonl", f"{url}/out", options=opts, run=LOCAL)


def test_verify_checks_shards_against_the_manifest(memfs):
    from embedlib import SourceError

    fs, url = memfs
    corpora.write(fs, f"{url}/c.jsonl", corpora.to_bytes(corpora.table(30), "jsonl"))
    eset = _embed(f"{url}/c.jsonl", f"{url}/out", text_column="body", split_rows=10)
    eset.verify()
    other = _embed(
        f"{url}/c.jsonl", f"{url}/other", text_column="body", split_rows=10, normalize=False
    )
    fs.pipe(f"{url}/out/part-00001.parquet", fs.cat(f"{url}/other/part-00002.parquet"))
    with pytest.raises(SourceError, match=r"part-00001\.parquet.*checksum"):
        eset.verify()
    assert len(other) == 30


def test_exact_search_equals_a_flat_index(memfs):
    from embedlib import exact_search
    from embedlib.index import ShardedIndex, build_index

    fs, url = memfs
    corpora.write(fs, f"{url}/c.jsonl", corpora.to_bytes(corpora.table(60, seed=8), "jsonl"))
    eset = _embed(f"{url}/c.jsonl", f"{url}/out", text_column="body", id_column="doc_id")
    build_index(f"{url}/out", f"{url}/idx", run=LOCAL)
    index = ShardedIndex(f"{url}/idx")
    queries = index.encode_text(["cheap shoes", "neural network tutorial"])
    ids, scores = exact_search(eset, queries, k=5)
    hits = index.search(queries, 5)
    assert ids == [[h.id for h in row] for row in hits]
    assert np.allclose(scores, [[h.score for h in row] for row in hits], atol=1e-5)


def test_matryoshka_dims_cut_vectors_and_queries_alike(tmp_path, st_model):
    """--dims 128: the first 128 dimensions, unit length again (sentence-transformers'
    `truncate_dim` then normalized); recorded in the fingerprint, so the index cuts its
    query text the same way and a set of full vectors is refused beside it."""
    from embedlib import ModelMismatchError, ShardedIndex, build_index
    from embedlib.exceptions import VectorError
    from embedlib.models.fingerprint import ModelFingerprint

    t = corpora.table(60, seed=4)
    pq.write_table(t, tmp_path / "c.parquet")
    options = dict(text_column="body", id_column="doc_id")
    cut = embed_corpus(str(tmp_path / "c.parquet"), str(tmp_path / "cut"),
                       options=EmbedOptions(dims=128, **options), run=LOCAL)  # fmt: skip
    assert cut.documents == 60
    eset = EmbeddingSet(str(tmp_path / "cut"))
    ids, vectors = eset.read_vectors()
    by_id = dict(zip(t.column("doc_id").to_pylist(), t.column("body").to_pylist(), strict=True))
    full = st_model.encode([by_id[i] for i in ids], normalize_embeddings=True)[:, :128]
    reference = full / np.linalg.norm(full, axis=1, keepdims=True)
    assert vectors.shape == (60, 128) and (vectors * reference).sum(1).min() >= 0.9999
    assert (eset.manifest.dim, eset.manifest.model.dims) == (128, 128)
    build_index(str(tmp_path / "cut"), str(tmp_path / "idx"), run=LOCAL)
    index = ShardedIndex(str(tmp_path / "idx"))
    assert index.manifest.model.dims == 128
    q = index.encode_text([by_id[ids[5]]])
    assert q.shape == (1, 128) and float(q[0] @ vectors[5]) > 0.9999
    assert index.search_text([by_id[ids[5]]], 1)[0][0].id == ids[5]
    embed_corpus(str(tmp_path / "c.parquet"), str(tmp_path / "full"),
                 options=EmbedOptions(**options), run=LOCAL)  # fmt: skip
    with pytest.raises(VectorError, match=r"has dimension 384.* has 128"):
        build_index(
            [str(tmp_path / "cut"), str(tmp_path / "full")], str(tmp_path / "both"), run=LOCAL
        )
    whole = ModelFingerprint.from_dict({**index.manifest.model.to_dict(), "dim": 384, "dims": None})
    with pytest.raises(ModelMismatchError, match="dims: 128 vs None"):
        index.manifest.model.require_compatible(
            whole, what="the index", other_what="the query encoder"
        )
    with pytest.raises(ValueError, match="more than the 384 dimensions"):
        embed_corpus(str(tmp_path / "c.parquet"), str(tmp_path / "big"),
                     options=EmbedOptions(dims=500, **options), run=LOCAL)  # fmt: skip
