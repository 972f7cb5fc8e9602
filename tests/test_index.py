"""Index build: planning, Ray build == single-process build, recall on real vectors,
versions and CURRENT, bad input."""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import ModelMismatchError, RunOptions
from embedlib.cache import FileCache
from embedlib.exceptions import IndexPlanError, VectorError
from embedlib.index import IndexOptions, ShardedIndex, build_index, plan_index
from embedlib.index.build.plan import parse_bytes
from embedlib.index.store.version import SearchParams

LOCAL = RunOptions(runner="local", progress=False)
RAY = RunOptions(progress=False)


def _write_vectors(path: Path, vectors: np.ndarray, ids: list[str] | None = None, **extra) -> str:
    ids = ids or [f"v{i}" for i in range(len(vectors))]
    vec = pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1).astype(np.float32)), vectors.shape[1]
    )
    pq.write_table(pa.table({"id": ids, "vector": vec, **extra}), path, row_group_size=4000)
    return str(path)


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_plan_follows_the_guidelines():
    gb = parse_bytes("4GB")
    assert plan_index(5000, 384, metric="cosine", memory_budget=gb).factory == "IDMap2,Flat"
    p = plan_index(400_000, 50, metric="cosine", memory_budget=gb)
    assert p.factory == "IVF2048,Flat" and p.train_size == 64 * 2048 and "sqrt" in p.reason
    assert (p.store_vectors, p.rescore) == ("float32", 0)  # full vectors: nothing to rescore
    # 10M: the lists capped so that training stays within minutes; codes rescored from int8
    p = plan_index(10_000_000, 384, metric="l2", memory_budget=gb)
    assert p.factory == "IVF8192,SQ8" and p.train_size == 400_000
    assert (p.store_vectors, p.rescore) == ("int8", 4)
    p = plan_index(10_000_000, 384, metric="dot", memory_budget=parse_bytes("1GB"))
    assert p.factory == "IVF8192,PQ96x4fs" and p.bytes_estimate <= parse_bytes("1GB")
    p = plan_index(10_000_000, 384, metric="dot", memory_budget=parse_bytes("500MB"))
    assert p.factory == "IVF8192,PQ64x4fs"  # fewer sub-quantizers fit a smaller budget
    p = plan_index(200_000, 384, metric="cosine", memory_budget=gb, compress="sq8",
                   store_vectors="float16", rescore=0)  # fmt: skip
    assert (p.factory, p.store_vectors, p.rescore) == ("IVF2048,SQ8", "float16", 0)
    p = plan_index(5000, 384, metric="cosine", memory_budget=gb, store_vectors="int8")
    assert p.train_size == 5000  # the int8 ranges are calibrated on a sample
    # below 10k vectors codes are scanned whole (no IVF list to miss), then rescored
    assert [plan_index(5000, 384, metric="cosine", memory_budget=gb, compress=c).factory
            for c in ("sq8", "pq", "binary")] == ["IDMap2,SQ8", "IDMap2,PQ96", "BFlat"]  # fmt: skip
    # too few vectors to train 8-bit (256 centroids) or even 4-bit sub-quantizers
    assert [plan_index(n, 384, metric="cosine", memory_budget=gb, compress="pq").factory
            for n in (72, 10)] == ["IDMap2,PQ96x4", "IDMap2,SQ8"]  # fmt: skip
    with pytest.raises(IndexPlanError, match=r"full vectors need .* --compress"):
        plan_index(10_000_000, 384, metric="dot", memory_budget=gb, compress="none")
    with pytest.raises(IndexPlanError, match="either --factory"):
        plan_index(1000, 8, metric="dot", memory_budget=gb, factory="Flat", compress="pq")
    assert (
        plan_index(1000, 8, metric="cosine", memory_budget=gb, factory="HNSW16").factory
        == "IDMap2,HNSW16"
    )
    with pytest.raises(IndexPlanError, match="FAISS rejects the factory string 'IVFbanana'"):
        plan_index(1000, 8, metric="cosine", memory_budget=gb, factory="IVFbanana")
    with pytest.raises(IndexPlanError, match=r"over the memory budget.*--memory-budget"):
        plan_index(
            1_000_000,
            384,
            metric="cosine",
            memory_budget=parse_bytes("100MB"),
            factory="IVF1024,Flat",
        )
    with pytest.raises(IndexPlanError, match="empty"):
        plan_index(0, 8, metric="cosine", memory_budget=gb)


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(
    ("n", "shards", "files"), [(6000, 3, 1), (40000, 3, 1), (40000, 1, 2)],
    ids=["flat", "ivf", "ivf-merged"],
)  # fmt: skip
def test_ray_sharded_build_equals_one_index_in_one_process(tmp_path, glove, n, shards, files):
    """3 shards on 2 CPUs: one add task per shard. 1 shard from 2 files: one add task per
    file, the two partial indexes merged."""
    _, words, vectors = glove
    x = vectors[:n]
    cut = np.linspace(0, n, files + 1).astype(int)
    srcs = [
        _write_vectors(tmp_path / f"v{f}.parquet", x[a:b], words[a:b])
        for f, (a, b) in enumerate(itertools.pairwise(cut))
    ]
    report = build_index(srcs, str(tmp_path / "idx"), options=IndexOptions(shards=shards), run=RAY)
    assert sum(s["tasks"] for s in report.per_node.values()) == max(shards, files)
    index = ShardedIndex(str(tmp_path / "idx"))
    assert index.ntotal == n and len(index.manifest.shards) == shards
    counts = [s.count for s in index.manifest.shards]
    assert sum(counts) == n and max(counts) - min(counts) <= 1  # balanced
    # the single-process twin: the same trained index, all vectors added in one go
    single = faiss.read_index(str(tmp_path / "idx" / "versions" / report.version / "trained.faiss"))
    single.add_with_ids(_normalized(x), np.arange(n, dtype=np.int64))
    queries = _normalized(vectors[n : n + 200])
    params = index.default_params
    kw = {"nprobe": params.nprobe} if params.nprobe is not None else {}
    want_d, want_i = single.search(
        queries, 10, params=faiss.SearchParametersIVF(**kw) if kw else None
    )
    got_d, got_i = index.search_ids(queries, 10)
    assert np.allclose(got_d, want_d, atol=1e-5)
    same = got_i == want_i
    # where ids differ, the scores must tie (equal vectors or equal distances)
    assert same.mean() > 0.99 and np.allclose(got_d[~same], want_d[~same], atol=1e-5)
    assert report.factory == ("IDMap2,Flat" if n < 10000 else "IVF1024,Flat")


@pytest.mark.parametrize(
    ("factory", "parts", "rows"),
    [("IVF64,Flat", 3, 2000), ("IVF64,Flat", 3, 5), ("IVF64,PQ8", 2, 1000),
     ("IVF64,SQ8", 2, 1000), ("OPQ8,IVF64,PQ8", 2, 1000)],
    ids=["flat-full", "flat-sparse", "pq", "sq8", "opq"],
)  # fmt: skip
def test_merging_ivf_files_on_disk_equals_faiss_merge(tmp_path, factory, parts, rows):
    """The list-by-list merge writes the very bytes FAISS writes after merge_from."""
    from embedlib.index.build.ivf_file import merge_ivf_files, streamable
    from embedlib.index.faiss_ops import merge_into

    x = np.random.default_rng(0).standard_normal((parts * rows + 4000, 32)).astype(np.float32)
    trained = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    trained.train(x[-4000:])
    assert streamable(trained)
    faiss.write_index(trained, str(tmp_path / "trained.faiss"))
    paths = []
    for p in range(parts):
        partial = faiss.read_index(str(tmp_path / "trained.faiss"))
        partial.add_with_ids(x[p * rows : (p + 1) * rows], np.arange(p * rows, (p + 1) * rows) * 7)
        paths.append(str(tmp_path / f"part-{p}.faiss"))
        faiss.write_index(partial, paths[-1])
    merged = faiss.read_index(paths[0])
    for path in paths[1:]:
        merge_into(merged, faiss.read_index(path))
    faiss.write_index(merged, str(tmp_path / "faiss.faiss"))
    n = merge_ivf_files(str(tmp_path / "trained.faiss"), paths, str(tmp_path / "ours.faiss"))
    assert n == parts * rows
    assert (tmp_path / "ours.faiss").read_bytes() == (tmp_path / "faiss.faiss").read_bytes()
    assert not streamable(faiss.index_factory(32, "IDMap2,Flat")) and not streamable(merged)


@pytest.mark.usefixtures("ray_cluster")
def test_a_faiss_task_uses_the_cpus_it_was_given():
    """A reused worker keeps the OpenMP threads of the task that first loaded FAISS there
    (one, under Ray's OMP_NUM_THREADS=1); a 2-CPU build task must get its two back."""
    import ray

    from embedlib.index.faiss_ops import use_task_cpus

    @ray.remote
    def threads_in_task() -> tuple[int, int]:
        faiss.omp_set_num_threads(1)  # as left by an earlier 1-CPU task in this worker
        before = faiss.omp_get_max_threads()
        use_task_cpus()
        return before, faiss.omp_get_max_threads()

    assert ray.get(threads_in_task.options(num_cpus=2).remote()) == (1, 2)
    assert ray.get(threads_in_task.options(num_cpus=1).remote()) == (1, 1)


@pytest.mark.slow  # 400k real vectors: 12 s
@pytest.mark.usefixtures("ray_cluster")
def test_glove_400k_recall_analogy_and_versions(tmp_path, glove):
    path, words, vectors = glove
    root = tmp_path / "idx"
    report = build_index(path, str(root), options=IndexOptions(shards=3), run=RAY)
    assert report.factory == "IVF2048,Flat" and report.version == "v-00001"
    assert (root / "CURRENT").read_text().strip() == "v-00001"
    manifest = json.loads((root / "versions" / "v-00001" / "manifest.json").read_text())
    assert manifest["recall_at_10"] >= 0.95 and manifest["ntotal"] == 400_000
    assert manifest["text_model"] is False and manifest["search_params"]["nprobe"] >= 1
    index = ShardedIndex(str(root))
    # an independent recall check: brute force over all 400k normalized vectors
    rng = np.random.default_rng(42)
    picks = rng.choice(len(words), 200, replace=False)
    xn = _normalized(vectors)
    truth = np.argsort(-(xn[picks] @ xn.T), axis=1)[:, 1:11]
    _, found = index.search_ids(xn[picks], 11)
    recall = np.mean(
        [
            len(set(f[f != p][:10]) & set(t)) / 10
            for f, t, p in zip(found, truth, picks, strict=True)
        ]
    )
    assert recall >= 0.93, recall
    hits = index.most_similar(positive=["king", "woman"], negative=["man"], k=3)
    assert hits[0].id == "queen" and {"king", "woman", "man"}.isdisjoint(h.id for h in hits)
    # a failed build leaves the published version alone; a good one is published beside it
    bad = vectors[:3000].copy()
    bad[17, 3] = np.nan
    with pytest.raises(VectorError, match=r"NaN.*'w17'"):
        build_index(
            _write_vectors(tmp_path / "nan.parquet", bad, [f"w{i}" for i in range(3000)]),
            str(root),
            run=RAY,
        )
    assert (root / "CURRENT").read_text().strip() == "v-00001"
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v-00001"]
    small = build_index(
        _write_vectors(tmp_path / "s.parquet", vectors[:2000], words[:2000]), str(root), run=LOCAL
    )
    assert small.version == "v-00002" and (root / "CURRENT").read_text().strip() == "v-00002"
    assert ShardedIndex(str(root)).ntotal == 2000
    assert ShardedIndex(str(root / "versions" / "v-00001")).ntotal == 400_000


def test_hnsw_shards_are_built_directly(tmp_path, glove):
    _, words, vectors = glove
    src = _write_vectors(tmp_path / "v.parquet", vectors[:8000], words[:8000])
    report = build_index(
        src, str(tmp_path / "idx"), options=IndexOptions(factory="HNSW16", shards=2), run=LOCAL
    )
    index = ShardedIndex(str(tmp_path / "idx"))
    assert report.factory == "IDMap2,HNSW16" and report.search_params.ef_search is not None
    assert index.ntotal == 8000 and report.recall_at_10 >= 0.95
    hit = index.search(vectors[words.index("paris")][None, :], 3)[0]
    assert hit[0].id == "paris"


def test_npy_vectors_with_an_id_list_and_metadata_lookup(tmp_path, glove):
    _, words, vectors = glove
    np.save(tmp_path / "v.npy", vectors[:3000])
    (tmp_path / "ids.txt").write_text("\n".join(words[:3000]) + "\n")
    build_index(
        str(tmp_path / "v.npy"),
        str(tmp_path / "idx"),
        options=IndexOptions(ids=str(tmp_path / "ids.txt"), metric="l2"),
        run=LOCAL,
    )
    index = ShardedIndex(str(tmp_path / "idx"))
    hits = index.search(vectors[words.index("france")][None, :], 2)[0]
    assert hits[0].id == "france" and hits[0].score == pytest.approx(0.0, abs=1e-4)
    assert hits[1].score > 0  # squared L2: lower is better
    assert np.allclose(index.vector("germany"), vectors[words.index("germany")])


def test_bad_inputs_get_clear_errors(tmp_path, glove):
    _, words, vectors = glove
    empty = _write_vectors(tmp_path / "empty.parquet", np.zeros((0, 50), np.float32), [])
    with pytest.raises(IndexPlanError, match="empty"):
        build_index(empty, str(tmp_path / "i1"), run=LOCAL)
    (tmp_path / "two").mkdir()
    _write_vectors(tmp_path / "two" / "a.parquet", vectors[:100], words[:100])
    _write_vectors(tmp_path / "two" / "b.parquet", vectors[100:200, :40], words[100:200])
    with pytest.raises(VectorError, match=r"b\.parquet.*dimension 40"):
        build_index(str(tmp_path / "two"), str(tmp_path / "i2"), run=LOCAL)
    dup = _write_vectors(tmp_path / "dup.parquet", vectors[:100], [*words[:99], words[0]])
    with pytest.raises(VectorError, match=f"duplicate ids.*{words[0]!r}"):
        build_index(dup, str(tmp_path / "i3"), run=LOCAL)
    zero = vectors[:100].copy()
    zero[5] = 0
    with pytest.raises(VectorError, match=r"zero vectors.*--metric"):
        build_index(_write_vectors(tmp_path / "z.parquet", zero), str(tmp_path / "i4"), run=LOCAL)
    with pytest.raises(IndexPlanError, match="IVFbanana"):
        build_index(
            str(tmp_path / "two" / "a.parquet"),
            str(tmp_path / "i5"),
            options=IndexOptions(factory="IVFbanana"),
            run=LOCAL,
        )
    for root in ("i1", "i2", "i3", "i4", "i5"):
        assert not (tmp_path / root / "CURRENT").exists()
        assert not list((tmp_path / root).glob("versions/.staging-*"))


def test_embedding_sets_from_different_models_are_refused(tmp_path):
    from embedlib import EmbedOptions, embed_corpus

    (tmp_path / "c.jsonl").write_text('{"text": "a cat video"}\n{"text": "buy cheap shoes"}\n')
    for name, length in (("a", 128), ("b", 64)):
        embed_corpus(
            str(tmp_path / "c.jsonl"),
            str(tmp_path / name),
            options=EmbedOptions(max_seq_length=length),
            run=LOCAL,
        )
    with pytest.raises(ModelMismatchError, match=r"max_seq_length: 128 vs 64"):
        build_index([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "idx"), run=LOCAL)


@pytest.mark.slow  # a fault scenario: 16 s
@pytest.mark.usefixtures("ray_cluster")
def test_a_killed_add_task_is_retried_and_the_index_is_unchanged(tmp_path, glove):
    path, _, _ = glove
    options = IndexOptions(shards=2, seed=7)
    clean = build_index(path, str(tmp_path / "clean"), options=options, run=RAY)
    killed: list[int] = []

    def kill_one_add_task() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
            for line in out.splitlines():
                pid, _, args = line.strip().partition(" ")
                if args.startswith("ray::add_units"):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_add_task)
    killer.start()
    again = build_index(path, str(tmp_path / "again"), options=options, run=RAY)
    killer.join()
    assert killed, "no add task was seen running"
    a = json.loads((tmp_path / "clean" / "versions" / clean.version / "manifest.json").read_text())
    b = json.loads((tmp_path / "again" / "versions" / again.version / "manifest.json").read_text())
    assert [s["count"] for s in a["shards"]] == [s["count"] for s in b["shards"]]
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert a["recall_at_10"] == b["recall_at_10"] and a["search_params"] == b["search_params"]


@pytest.mark.parametrize(
    ("compress", "store"), [("sq8", "int8"), ("pq", "float16"), ("pq", "int8")]
)
def test_compressed_codes_rescored_answer_the_same_on_any_shard_count(
    tmp_path, glove, compress, store
):
    """Codes in RAM, vectors on disk: the build tunes nprobe and the rescoring factor to
    the target; with every list probed and candidates enough, 1 shard and 3 shards give
    the same top 10; include vector gives the stored (dequantized) vector."""
    _, words, vectors = glove
    src = _write_vectors(tmp_path / "v.parquet", vectors[:20000], words[:20000])
    answers = []
    for shards in (1, 3):
        options = IndexOptions(compress=compress, store_vectors=store, shards=shards)
        report = build_index(src, str(tmp_path / f"idx{shards}"), options=options, run=LOCAL)
        index = ShardedIndex(str(tmp_path / f"idx{shards}"))
        assert report.recall_met and (report.search_params.rescore or 0) >= 4
        assert (
            index.manifest.vectors.dtype == store
            and ("SQ8" if compress == "sq8" else "PQ") in report.factory
        )
        q = index.prepare_queries(vectors[20000:20020])
        _, ids = index.search_ids(q, 10, nprobe=10_000, rescore=64)
        answers.append(ids)
        hit = index.search(vectors[:1], 1, include=["vector"])[0][0]
        unit = vectors[0] / np.linalg.norm(vectors[0])
        assert hit.id == words[0] and np.abs(np.array(hit.vector) - unit).max() < 0.02
    assert (answers[0] == answers[1]).mean() > 0.99  # ties in dequantized scores may swap


def test_binary_codes_are_rescored_filtered_and_refused_for_l2(tmp_path):
    """Sign bits in a binary IVF: tuned to the target with rescoring, the same top 10 on
    1 and 3 shards, a filter keeping a third of the rows applied (FAISS's binary IVF
    takes no ID selector), and refused for l2 (binary codes approximate angles)."""
    rng = np.random.default_rng(5)
    n, d = 30_000, 64
    centers = rng.standard_normal((100, d)).astype(np.float32)
    x = centers[rng.integers(0, 100, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    tag = np.arange(n) % 3
    table = pa.table({"id": [f"r{i}" for i in range(n)], "tag": tag,
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)})  # fmt: skip
    pq.write_table(table, tmp_path / "v.parquet")
    answers = []
    for shards in (1, 3):
        options = IndexOptions(compress="binary", shards=shards)
        report = build_index(
            str(tmp_path / "v.parquet"), str(tmp_path / f"b{shards}"), options=options, run=LOCAL
        )
        assert report.factory.startswith("BIVF") and report.recall_met
        index = ShardedIndex(str(tmp_path / f"b{shards}"))
        assert index.manifest.vectors.dtype == "int8"
        q = index.prepare_queries(x[:20] + 0.1)
        answers.append(index.search_ids(q, 10, nprobe=10_000, rescore=64)[1])
        hits = index.search(x[:5], 10, filter={"tag": 1}, nprobe=10_000)
        assert all(len(row) == 10 and all(int(h.id[1:]) % 3 == 1 for h in row) for row in hits)
    assert (answers[0] == answers[1]).mean() > 0.99
    with pytest.raises(IndexPlanError, match="use --metric cosine or dot"):
        plan_index(n, d, metric="l2", memory_budget=10**9, compress="binary")
    with pytest.raises(IndexPlanError, match="need --rescore >= 1"):
        plan_index(n, d, metric="cosine", memory_budget=10**9, compress="binary", rescore=0)


def test_missed_recall_warns_or_fails_with_strict_recall(tmp_path, glove):
    _, words, vectors = glove
    src = _write_vectors(tmp_path / "v.parquet", vectors[:12000], words[:12000])
    lossy = IndexOptions(factory="IVF64,PQ5", target_recall=0.999, rescore=0)
    report = build_index(src, str(tmp_path / "idx"), options=lossy, run=LOCAL)
    assert not report.recall_met and "WARNING: recall@10" in str(report)
    assert report.search_params == SearchParams(nprobe=64)  # it tried up to every list
    # the same 5-byte codes rescored exactly from the stored vectors reach the target
    rescored = IndexOptions(factory="IVF64,PQ5", target_recall=0.95)
    fixed = build_index(src, str(tmp_path / "idx2"), options=rescored, run=LOCAL)
    assert (
        fixed.recall_met and report.recall_at_10 < 0.9 and (fixed.search_params.rescore or 0) >= 4
    )
    strict = IndexOptions(factory="IVF64,PQ5", target_recall=0.999, strict_recall=True, rescore=0)
    from embedlib.exceptions import RecallError

    with pytest.raises(RecallError, match=r"below the target 0\.999"):
        build_index(src, str(tmp_path / "idx"), options=strict, run=LOCAL)
    assert (tmp_path / "idx" / "CURRENT").read_text().strip() == report.version  # untouched


def test_merge_on_an_object_store_equals_the_local_one(memfs, tmp_path, glove):
    """IVF partials merged on disk through local copies (memory:// stands in for S3)
    give the same shard file as the merge on a local disk."""
    fs, url = memfs
    _, words, vectors = glove
    for f, (a, b) in enumerate([(0, 10000), (10000, 20000)]):
        local = _write_vectors(tmp_path / f"v{f}.parquet", vectors[a:b], words[a:b])
        fs.pipe(f"{url}/v{f}.parquet", Path(local).read_bytes())
    options = IndexOptions(shards=1, seed=3)
    srcs = [str(tmp_path / "v0.parquet"), str(tmp_path / "v1.parquet")]
    on_disk = build_index(srcs, str(tmp_path / "idx"), options=options, run=LOCAL)
    remote = build_index([f"{url}/v0.parquet", f"{url}/v1.parquet"], f"{url}/idx", options=options, run=LOCAL)  # fmt: skip
    assert (
        on_disk.factory.startswith("IVF")
        and sum(s["tasks"] for s in on_disk.per_node.values()) == 2
    )
    a = json.loads((tmp_path / "idx" / "versions" / on_disk.version / "manifest.json").read_text())
    b = json.loads(fs.cat(f"{url}/idx/versions/{remote.version}/manifest.json"))
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert a["recall_at_10"] == b["recall_at_10"] and not fs.exists(
        f"{url}/idx/versions/{remote.version}/_partials"
    )


def test_index_on_memory_storage_and_text_queries(memfs, tmp_path):
    from embedlib import EmbedOptions, embed_corpus
    from embedlib.exceptions import QueryError

    fs, url = memfs
    fs.pipe(
        f"{url}/c.jsonl",
        b'{"text": "cat video"}\n{"text": "machine learning tutorial"}\n{"text": "buy cheap shoes"}\n',
    )
    embed_corpus(f"{url}/c.jsonl", f"{url}/emb", options=EmbedOptions(), run=LOCAL)
    build_index(f"{url}/emb", f"{url}/idx", run=LOCAL)
    cache = FileCache(tmp_path / "cache", budget_bytes=10**9)
    index = ShardedIndex(f"{url}/idx", cache=cache)
    assert index.manifest.text_model is True
    hits = index.search_text(["how to train a neural net"], 1)[0]
    assert hits[0].text == "machine learning tutorial" and hits[0].id == "c.jsonl:1"
    # the cache: private, its files named by the checksums the manifest lists
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    entry = index.manifest.shards[0]
    assert f"{entry.sha256}-{entry.file}" in cached and not [c for c in cached if c[0] == "."]
    np.save(tmp_path / "v.npy", np.eye(4, dtype=np.float32))
    build_index(str(tmp_path / "v.npy"), str(tmp_path / "vidx"), run=LOCAL)
    with pytest.raises(QueryError, match="without a text model"):
        ShardedIndex(str(tmp_path / "vidx")).search_text(["anything"])


def test_a_selective_filter_reads_only_the_vectors_of_its_rows(tmp_path):
    """An exact filtered search over 20,000 rows, matching 3,000: their vectors are read
    from the vector file (no row group of the docs table is read for vectors), and the
    answer equals brute force over the matching rows."""
    rng = np.random.default_rng(3)
    n = 20_000
    x = rng.standard_normal((n, 16)).astype(np.float32)
    tag = np.where(np.arange(n) >= 17_000, "late", "early")
    table = pa.table({"id": [f"r{i}" for i in range(n)], "tag": tag,
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)})  # fmt: skip
    pq.write_table(table, tmp_path / "v.parquet")
    build_index(str(tmp_path / "v.parquet"), str(tmp_path / "idx"),
                options=IndexOptions(factory="Flat", metric="l2"), run=LOCAL)  # fmt: skip
    index = ShardedIndex(str(tmp_path / "idx"))
    docs = index.shards.shards[0].docs
    assert len(docs.group_starts) - 1 == 3  # 8192-row groups
    q = rng.standard_normal((2, 16)).astype(np.float32)
    hits = index.search(q, 5, filter={"tag": "late"})
    late = np.arange(17_000, n)
    for row, query in zip(hits, q, strict=True):
        want = late[np.argsort(((x[late] - query) ** 2).sum(1))[:5]]
        assert [h.id for h in row] == [f"r{i}" for i in want]
    assert docs.vector_file is not None and not docs._vector_groups


def _to_pre_vector_file_layout(version: Path) -> None:
    """Rewrite a version as builds before vector files wrote it: each vector in its docs
    row, no vectors-NNNNN.npy, no "vectors" in the manifest."""
    manifest = json.loads((version / "manifest.json").read_text())
    for shard in manifest["shards"]:
        x = np.load(version / shard.pop("vectors"))
        del shard["vectors_sha256"]
        (version / f"vectors-{shard['shard']:05d}.npy").unlink()
        docs = pq.read_table(version / shard["docs"])
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        pq.write_table(docs.add_column(2, "vector", vec), version / shard["docs"])
    del manifest["vectors"]
    (version / "manifest.json").write_text(json.dumps(manifest))


def test_an_index_built_before_vector_files_answers_and_retrains(tmp_path, glove):
    """An index whose docs tables hold the vectors (the layout before vector files)
    answers as before, vector by id included; an update is refused naming --retrain;
    the retrain writes vector files and answers the same."""
    from embedlib.exceptions import EmbedlibError
    from embedlib.index import retrain_index, update_index

    _, words, vectors = glove
    src = _write_vectors(tmp_path / "v.parquet", vectors[:3000], words[:3000])
    build_index(src, str(tmp_path / "idx"), options=IndexOptions(shards=2), run=LOCAL)
    fresh = ShardedIndex(str(tmp_path / "idx"))
    want = fresh.search(vectors[:5], 5)
    _to_pre_vector_file_layout(tmp_path / "idx" / "versions" / "v-00001")
    old = ShardedIndex(str(tmp_path / "idx"))
    assert old.docs.shards[0].vector_file is None
    assert [[h.id for h in r] for r in old.search(vectors[:5], 5)] == [
        [h.id for h in r] for r in want
    ]
    np.testing.assert_allclose(old.vector(words[7]), fresh.vector(words[7]), rtol=1e-6)
    with pytest.raises(EmbedlibError, match="--retrain"):
        update_index(str(tmp_path / "idx"), delete_ids=[words[0]], run=LOCAL)
    retrain_index(str(tmp_path / "idx"), run=LOCAL)
    again = ShardedIndex(str(tmp_path / "idx"))
    assert again.docs.shards[0].vector_file is not None
    assert [[h.id for h in r] for r in again.search(vectors[:5], 5)] == [
        [h.id for h in r] for r in want
    ]
