"""Index updates: the same answers as a full rebuild on the final corpus, only new and
changed documents embedded, crash safety, the lock, the model guard, gc."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from embedlib import EmbedOptions, RunOptions, embed_corpus
from embedlib.exceptions import EmbedlibError, IndexLockedError, ModelMismatchError, SourceError
from embedlib.index import ShardedIndex, build_index
from embedlib.index.build.driver import IndexOptions
from embedlib.index.store.lock import LOCK, index_lock
from embedlib.index.update.drift import Drift
from embedlib.index.update.gc import gc_versions
from embedlib.index.update.upsert import update_index
from embedlib.sets.embedding_set import EmbeddingSet
from tests import corpora

LOCAL = RunOptions(runner="local", progress=False)
QUERIES = ["how to parse arguments", "a sunny day by the river", "machine learning", "old city"]


def _write(path: Path, docs: dict[str, str]) -> str:
    path.write_text(
        "".join(json.dumps({"id": k, "text": v, "n": len(v)}) + "\n" for k, v in docs.items())
    )
    return str(path)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """v1 of a corpus, and v2: 25 deleted, 25 changed, 40 added, the rest unchanged."""
    root = tmp_path_factory.mktemp("upd")
    texts = corpora.sentences(400, seed=5)
    v1 = {f"d{i}": t for i, t in enumerate(texts[:360])}
    v2 = dict(v1)
    for i in range(25):
        v2.pop(f"d{i}")
    for i in range(25, 50):
        v2[f"d{i}"] = "revised: " + v1[f"d{i}"]
    v2.update({f"n{i}": t for i, t in enumerate(texts[360:])})
    paths = _write(root / "v1.jsonl", v1), _write(root / "v2.jsonl", v2)
    embed_corpus(paths[0], str(root / "emb1"), options=EmbedOptions(), run=LOCAL)
    embed_corpus(paths[1], str(root / "emb2"), options=EmbedOptions(), run=LOCAL)
    return root, paths


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_an_update_answers_as_a_rebuild_with_the_same_quantizer(
    versions, tmp_path, factory, ray_cluster
):
    root, (_v1, v2) = versions
    index = str(tmp_path / "idx")
    build_index(
        str(root / "emb1"), index, options=IndexOptions(factory=factory, shards=2), run=LOCAL
    )
    report = update_index(index, v2, run=RunOptions(progress=False))  # embedding on Ray
    assert (report.added, report.changed, report.deleted, report.kept) == (40, 25, 25, 310)
    assert report.embedded == 65 and report.version == "v-00002"
    updated = ShardedIndex(index)
    assert updated.manifest.ntotal == 375 and updated.manifest.updated_from == "v-00001"
    # unchanged documents were not embedded again: their vectors are v1's, bit for bit
    old = ShardedIndex(str(tmp_path / "idx" / "versions" / "v-00001"))
    for doc_id in ("d60", "d200", "d359"):
        assert np.array_equal(updated.vector(doc_id), old.vector(doc_id))
    # the twin: the v1 trained quantizer filled in one process with the final corpus
    ids, vectors = EmbeddingSet(str(root / "emb2")).read_vectors()
    final = dict(zip(ids, vectors, strict=True))
    final.update({i: old.vector(i) for i in final if i.startswith("d") and int(i[1:]) >= 50})
    twin = faiss.read_index(str(tmp_path / "idx" / "versions" / "v-00001" / "trained.faiss"))
    names = sorted(final)
    x = np.stack([final[i] for i in names]).astype(np.float32)
    twin.add_with_ids(x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(len(names)))
    nprobe = updated.manifest.search_params.nprobe
    q = updated.encode_text(QUERIES)
    if nprobe:
        faiss.extract_index_ivf(twin).nprobe = nprobe
    scores, rows = twin.search(q, 10)
    hits = updated.search(q, 10, include=())
    for n in range(len(QUERIES)):
        assert [h.id for h in hits[n]] == [names[r] for r in rows[n]]
        assert np.allclose([h.score for h in hits[n]], scores[n], atol=1e-5)
    if factory == "Flat":  # exact: a full rebuild from a fresh embedding of v2 agrees too
        build_index(
            str(root / "emb2"),
            str(tmp_path / "rebuilt"),
            options=IndexOptions(factory="Flat"),
            run=LOCAL,
        )
        rebuilt = ShardedIndex(str(tmp_path / "rebuilt")).search(q, 10, include=())
        assert [[h.id for h in r] for r in rebuilt] == [[h.id for h in r] for r in hits]
        assert report.drift is None
    else:
        assert report.drift is not None and report.drift.new_distance > 0
    again = update_index(index, v2, run=LOCAL)  # nothing changed: nothing published
    assert again.version is None and again.kept == 375


@pytest.mark.parametrize(
    "options",
    [
        IndexOptions(factory="IVF8,SQ8", shards=2),
        pytest.param(IndexOptions(compress="pq", shards=2), marks=pytest.mark.slow),
        pytest.param(IndexOptions(compress="binary", shards=2), marks=pytest.mark.slow),
    ],
    ids=["ivf-sq8", "flat-pq", "binary"],
)
def test_an_update_of_a_compressed_index_rewrites_its_vector_files(versions, tmp_path, options):
    """SQ8 or binary codes with int8 vector files: an update keeps the calibrated ranges,
    copies the unchanged documents' stored vectors bit for bit, and with every candidate
    rescored the updated index ranks as brute force over the vectors it stores."""
    root, (_v1, v2) = versions
    index = str(tmp_path / "idx")
    build_index(str(root / "emb1"), index, options=options, run=LOCAL)
    old = ShardedIndex(index)
    assert old.manifest.vectors is not None and old.manifest.vectors.dtype == "int8"
    assert old.manifest.plan.rescore == 4
    report = update_index(index, v2, run=LOCAL)
    assert (report.added, report.changed, report.deleted) == (40, 25, 25)
    updated = ShardedIndex(index)
    assert updated.manifest.vectors == old.manifest.vectors
    for doc_id in ("d60", "d359"):
        assert np.array_equal(updated.vector(doc_id), old.vector(doc_id))
    names = sorted(i for docs in updated.docs.shards for i in docs.ids.to_pylist())
    assert len(names) == 375 and "d0" not in names and "n0" in names
    x = np.stack([updated.vector(i) for i in names])
    q = updated.encode_text(QUERIES)
    scores, rows = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    hits = updated.search(q, 10, include=(), nprobe=8, rescore=64)
    for n in range(len(QUERIES)):
        assert [h.id for h in hits[n]] == [names[r] for r in rows[n]]
        assert np.allclose([h.score for h in hits[n]], scores[n], atol=1e-5)


def test_a_crash_before_publishing_leaves_the_served_version_and_a_rerun_completes(
    versions, tmp_path, monkeypatch
):
    root, (_v1, v2) = versions
    index = str(tmp_path / "idx")
    build_index(str(root / "emb1"), index, options=IndexOptions(factory="Flat"), run=LOCAL)
    import embedlib.index.update.upsert as update_module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(update_module, "publish", crash)
    with pytest.raises(KeyboardInterrupt):
        update_index(index, v2, run=LOCAL)
    assert (tmp_path / "idx" / "CURRENT").read_text().strip() == "v-00001"
    assert ShardedIndex(index).manifest.ntotal == 360
    assert not list((tmp_path / "idx" / "versions").glob(".staging-*"))
    assert not (tmp_path / "idx" / LOCK).exists()  # the lock went with the failed update
    work = list((tmp_path / "idx" / "_updates").glob("*/embedded/manifest.json"))
    assert len(work) == 1  # the embedded rows are kept for the re-run
    committed = {p: p.stat().st_mtime_ns for p in work[0].parent.glob("part-*.parquet")}
    monkeypatch.undo()
    report = update_index(index, v2, run=LOCAL)
    assert report.version == "v-00002" and ShardedIndex(index).manifest.ntotal == 375
    assert all(p.stat().st_mtime_ns == t for p, t in committed.items() if p.exists())
    assert not (tmp_path / "idx" / "_updates").exists()


def test_concurrent_updates_wait_or_are_refused_never_interleave(versions, tmp_path):
    root, (v1, v2) = versions
    index = str(tmp_path / "idx")
    build_index(str(root / "emb1"), index, options=IndexOptions(factory="Flat"), run=LOCAL)
    import fsspec

    fs = fsspec.filesystem("file")
    with index_lock(fs, index), pytest.raises(IndexLockedError, match="locked by another update"):
        update_index(index, v2, run=LOCAL)
    results = []
    holder = threading.Event()

    def hold() -> None:
        with index_lock(fs, index):
            holder.set()
            time.sleep(1.5)

    t = threading.Thread(target=hold)
    t.start()
    holder.wait()
    report = update_index(index, v2, wait_s=60, run=LOCAL)  # waits for the holder
    t.join()
    results.append(report.version)
    assert results == ["v-00002"]
    stale = {"token": "x", "host": "gone", "pid": 1, "what": "update", "since": time.time() - 7200}
    (tmp_path / "idx" / LOCK).write_text(json.dumps(stale))
    assert update_index(index, v1, run=LOCAL).version == "v-00003"  # a stale lock is taken over


def test_another_model_and_unknown_deletes_are_refused(versions, tmp_path):
    root, (_v1, v2) = versions
    index = str(tmp_path / "idx")
    build_index(str(root / "emb1"), index, options=IndexOptions(factory="Flat"), run=LOCAL)
    with pytest.raises(ModelMismatchError, match=r"all-MiniLM-L6-v2.*'other/model'"):
        update_index(index, v2, model="other/model", run=LOCAL)
    with pytest.raises(SourceError, match="not in the index"):
        update_index(index, delete_ids=["nope"], run=LOCAL)
    report = update_index(index, delete_ids=["d1", "d2"], run=LOCAL)
    assert (report.deleted, report.embedded) == (2, 0)
    assert {"d1", "d2"}.isdisjoint(h.id for h in ShardedIndex(index).search_text(["x"], 400)[0])


def test_gc_keeps_current_and_the_newest(versions, tmp_path):
    root, (v1, v2) = versions
    index = str(tmp_path / "idx")
    build_index(str(root / "emb1"), index, options=IndexOptions(factory="Flat"), run=LOCAL)
    update_index(index, v2, run=LOCAL)
    update_index(index, v1, run=LOCAL)
    assert gc_versions(index, keep=1) == []  # all younger than the hour of retention
    assert gc_versions(index, keep=1, retain_s=0) == ["v-00001", "v-00002"]
    assert [p.name for p in (tmp_path / "idx" / "versions").iterdir()] == ["v-00003"]
    assert ShardedIndex(index).manifest.ntotal == 360


def test_gc_never_removes_a_version_a_server_holds(versions, tmp_path):
    """A server that does not follow CURRENT holds a lease on the version it serves: gc
    keeps it whatever --keep says, and --keep counts only the versions nobody holds; a
    lease that lapsed (its holder died) protects nothing."""
    import json
    import time

    import fsspec

    from embedlib.index.store.leases import LeaseRenewer, lease_path, take_lease

    root, (v1, v2) = versions
    index = str(tmp_path / "idx")
    build_index(str(root / "emb1"), index, options=IndexOptions(factory="Flat"), run=LOCAL)
    for source in (v2, v1, v2):
        update_index(index, source, run=LOCAL)  # v-00002 .. v-00004
    server = LeaseRenewer()
    server.hold(index, "v-00001")  # serving v-00001 without --watch
    take_lease(fsspec.filesystem("file"), index, "v-00002", "dead-holder", ttl_s=-1)  # lapsed
    assert (
        json.loads(Path(lease_path(index, "v-00001", server.holder)).read_text())["expires_at"]
        > time.time()
    )
    removed = gc_versions(index, keep=1, retain_s=0)
    assert removed == ["v-00002", "v-00003"]  # v-00001 held; v-00004 the newest free
    assert ShardedIndex(str(tmp_path / "idx" / "versions" / "v-00001")).manifest.ntotal == 360
    server.stop()  # the lease goes with the server
    assert gc_versions(index, keep=1, retain_s=0) == ["v-00001"]


def test_drift_flags_vectors_far_from_the_quantizer():
    assert Drift(0.5, 0.3, 1.1, 1.2).should_retrain  # farther from the centroids
    assert Drift(0.3, 0.3, 1.1, 2.0).should_retrain  # lists much less balanced
    assert not Drift(0.31, 0.3, 1.1, 1.2).should_retrain


def test_retrain_rebuilds_from_the_documents_the_index_holds(versions, tmp_path, capsys):
    from embedlib.cli import main

    root, (_v1, v2) = versions
    index = str(tmp_path / "idx")
    build_index(
        str(root / "emb1"), index, options=IndexOptions(factory="IVF8,Flat", shards=2), run=LOCAL
    )
    update_index(index, v2, run=LOCAL)
    assert main(["index", "--retrain", index, "--local", "--no-progress"]) == 0
    assert "v-00003" in capsys.readouterr().out
    retrained = ShardedIndex(index)
    m = retrained.manifest
    assert (m.ntotal, m.factory, len(m.shards)) == (375, "IVF8,Flat", 2)
    assert m.text_model and m.sources[0]["kind"] == "retrain"
    updated = ShardedIndex(str(tmp_path / "idx" / "versions" / "v-00002"))
    for doc_id in ("n3", "d30", "d300"):  # added, changed and kept documents, same vectors
        assert np.allclose(retrained.vector(doc_id), updated.vector(doc_id), atol=1e-6)
    hit = retrained.search_text(["revised"], 1, include=("text", "metadata"))[0][0]
    assert set(hit.metadata) == {"n"} and hit.text  # metadata kept; no _iid or text_hash
    report = update_index(index, v2, run=LOCAL)  # content hashes survived the rebuild
    assert report.version is None and report.kept == 375


def test_the_lock_is_exclusive_on_an_object_store(monkeypatch):
    """On S3 (moto, through s3fs) the lock is a conditional create (If-None-Match)."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
            monkeypatch.setenv(name, value)
        fs = fsspec.filesystem("s3", endpoint_url=f"http://{host}:{port}", skip_instance_cache=True)
        fs.mkdir("bucket")
        with (
            index_lock(fs, "bucket/idx"),
            pytest.raises(IndexLockedError),
            index_lock(fs, "bucket/idx"),
        ):
            pass
        assert not fs.exists(f"bucket/idx/{LOCK}")
        with index_lock(fs, "bucket/idx"):  # free again
            assert fs.exists(f"bucket/idx/{LOCK}")
    finally:
        server.stop()


def test_current_moves_only_if_unchanged_on_an_object_store(monkeypatch):
    """On S3 (moto, through s3fs) CURRENT moves by one conditional PUT: If-Match the
    CURRENT the writer found when it began publishing (If-None-Match when there was
    none). A writer that passed its last lease check and then stalled while another took
    its lock over and published cannot move CURRENT back over that version (it did: the
    check and the act were two steps); its own version is left unpublished."""
    from contextlib import contextmanager

    import fsspec
    from moto.server import ThreadedMotoServer

    from embedlib.exceptions import LockLostError
    from embedlib.index.store.layout import publish

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
            monkeypatch.setenv(name, value)
        fs = fsspec.filesystem("s3", endpoint_url=f"http://{host}:{port}", skip_instance_cache=True)
        fs.mkdir("pointer")  # moto keeps buckets per process: a name of its own

        def staging(tag: str) -> str:
            fs.pipe(f"pointer/idx/versions/.staging-{tag}/manifest.json", b"{}")
            return f"pointer/idx/versions/.staging-{tag}"

        assert publish(fs, "pointer/idx", staging("a")) == "v-00001"  # no CURRENT yet

        class StallsBeforeItsLastAct:
            """A lease whose holder passes its checks, but before its last act (moving
            CURRENT) another writer takes the lock over and publishes."""

            calls = 0

            @contextmanager
            def fenced(self):
                self.calls += 1
                if self.calls == 3:
                    assert publish(fs, "pointer/idx", staging("c")) == "v-00003"
                yield

        with pytest.raises(LockLostError, match="v-00002 is left unpublished"):
            publish(fs, "pointer/idx", staging("b"), lease=StallsBeforeItsLastAct())
        fs.invalidate_cache()
        assert fs.cat("pointer/idx/CURRENT") == b"v-00003\n"
        assert fs.exists("pointer/idx/versions/v-00002/manifest.json")  # complete, for gc
    finally:
        server.stop()


def test_an_hnsw_index_is_refused_before_any_work(versions, tmp_path):
    """HNSW cannot remove vectors: the update says so and what to do, and embeds nothing
    (the plan in the typed manifest knows it is not mergeable)."""
    root, (_v1, v2) = versions
    index = str(tmp_path / "idx")
    build_index(str(root / "emb1"), index, options=IndexOptions(factory="HNSW16"), run=LOCAL)
    with pytest.raises(EmbedlibError, match="HNSW16, whose vectors cannot be removed in place"):
        update_index(index, v2, run=LOCAL)
    assert not (tmp_path / "idx" / "_updates").exists()
    assert ShardedIndex(index).version.name == "v-00001"


def test_a_metadata_only_upsert_is_applied_without_embedding(versions, tmp_path):
    """Same text, new metadata: the documents keep their vectors (nothing embedded), their
    metadata changes (filters see it), a column left out becomes null, and an upsert
    that changes nothing publishes nothing."""
    import pyarrow as pa

    root, (v1, _v2) = versions
    index = str(tmp_path / "idx")
    build_index(str(root / "emb1"), index, options=IndexOptions(factory="Flat", shards=2),
                run=LOCAL)  # fmt: skip
    before = ShardedIndex(index)
    text = {r["id"]: r["text"] for r in map(json.loads, Path(v1).read_text().splitlines())}
    old = before.search_text([text["d7"]], k=1, include=["vector", "metadata"])[0][0]
    assert old.id == "d7" and old.metadata == {"n": len(text["d7"])}
    upserts = pa.table({"id": ["d7", "d8"], "text": [text["d7"], text["d8"]], "n": [-1, None]})
    report = update_index(index, upserts=upserts, delta=True, run=LOCAL)
    assert (report.version, report.changed, report.embedded, report.added) == ("v-00002", 2, 0, 0)
    after = ShardedIndex(index)
    hit = after.search_text([text["d7"]], k=1, include=["vector", "metadata"])[0][0]
    assert hit.id == "d7" and hit.metadata == {"n": -1}
    np.testing.assert_array_equal(hit.vector, old.vector)
    assert after.search_text([text["d7"]], k=3, filter={"n": -1})[0][0].id == "d7"
    d8 = after.search_text([text["d8"]], k=1, include=["metadata"])[0][0]
    assert d8.id == "d8" and d8.metadata.get("n") is None
    assert after.manifest.ntotal == before.manifest.ntotal
    again = update_index(index, upserts=upserts, delta=True, run=LOCAL)
    assert again.version is None and again.changed == 0


def test_a_value_that_does_not_fit_its_column_is_refused_and_loses_nothing(versions, tmp_path):
    """An int64 column holding 2**53 + 1: an upsert sending 1.5 for it used to widen the
    column to float64, fail to convert the old rows and drop them all while reporting
    done. The column keeps its type: the value is refused naming column and value, and
    nothing is published."""
    import pyarrow as pa

    from embedlib.exceptions import SourceError

    root, (v1, _v2) = versions
    index = str(tmp_path / "idx")
    build_index(str(root / "emb1"), index, options=IndexOptions(factory="Flat", shards=2),
                run=LOCAL)  # fmt: skip
    text = {r["id"]: r["text"] for r in map(json.loads, Path(v1).read_text().splitlines())}
    big = 2**53 + 1
    update_index(index, upserts=pa.table({"id": ["d7"], "text": [text["d7"]], "n": [big]}),
                 delta=True, run=LOCAL)  # fmt: skip
    current = (tmp_path / "idx" / "CURRENT").read_text()
    for bad, kind in ((1.5, None), ("seven", None), (2**63, pa.uint64())):
        upserts = pa.table({"id": ["d8"], "text": [text["d8"]], "n": pa.array([bad], kind)})
        with pytest.raises(SourceError, match=rf"metadata 'n': the value {bad!r} does not fit"):
            update_index(index, upserts=upserts, delta=True, run=LOCAL)
    assert (tmp_path / "idx" / "CURRENT").read_text() == current  # nothing published
    after = ShardedIndex(index)
    assert after.manifest.ntotal == 360
    hit = after.search_text([text["d7"]], k=1, include=["metadata"])[0][0]
    assert hit.id == "d7" and hit.metadata == {"n": big}  # exact: still int64
    assert after.search_text([text["d9"]], k=1)[0][0].id == "d9"  # the shards' other rows
