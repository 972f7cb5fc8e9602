"""Scale rows: N synthetic 384-d vectors built, served and searched with each compression,
beside one-process FAISS building the same codes from the same sample.

`python -m benchmarks scale --vectors 1M` (10M needs ~40 GB of free disk and hours on two
cores). The vectors come from the generator of ../shared/checks/scale-10m (a mixture of
4,096 clusters in a 48-d latent space lifted to 384-d through a random matrix and a tanh,
normalized; the same seeds, so the same vectors); 200 queries from another seed; the
exact top-10 by brute force, streaming.

For each of --compress none (float32 codes), sq8, pq and binary (vectors stored int8
beside compressed codes, as auto does; float32 beside full vectors):
- `embedlib index PARTS ROOT --metric cosine --shards 4 --compress C` with a memory
  budget that fits the codes: wall time and peak memory of its process tree (RSS and
  PSS summed), bytes per vector on disk;
- one-process FAISS: the same factory trained on the same seeded sample (the rows the
  build's planner picks) and filled part by part, in one process: the time ratio;
- `embedlib serve`: RSS summed over its processes after 1,000 warm-up queries, recall@10
  over HTTP with the tuned rescoring and with `rescore: 0` (the codes alone), p50 of one
  client, queries/s of 16.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.memory import peak_memory, wait_ready

D, NQ, PART = 384, 200, 500_000
COMPRESSIONS = ("none", "sq8", "pq", "binary")
GENERATE = f"""
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, os, sys
N, D, NQ, PART, d = int(sys.argv[1]), {D}, {NQ}, {PART}, sys.argv[2]
rng = np.random.default_rng(7)
L, C = 48, 4096
centers = rng.standard_normal((C, L)).astype('float32') * 1.5
lift = rng.standard_normal((L, D)).astype('float32') / np.sqrt(L)
def make(n, r):
    z = centers[r.integers(0, C, n)] + r.standard_normal((n, L)).astype('float32')
    x = np.tanh(z @ lift) + 0.05 * r.standard_normal((n, D)).astype('float32')
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype('float32')
q = make(NQ, np.random.default_rng(99))
np.save(d + '/queries.npy', q)
os.makedirs(d + '/parts', exist_ok=True)
best_s = np.full((NQ, 10), -np.inf, 'float32'); best_i = np.zeros((NQ, 10), 'int64')
for p, start in enumerate(range(0, N, PART)):
    n = min(PART, N - start)
    x = make(n, np.random.default_rng(1000 + p))
    ids = pa.array([f"v{{i}}" for i in range(start, start + n)])
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), D)
    pq.write_table(pa.table({{'id': ids, 'vector': vec}}), f'{{d}}/parts/part-{{p:04d}}.parquet', row_group_size=50000)
    s = q @ x.T
    top = np.argpartition(-s, 10, axis=1)[:, :10]
    cs = np.take_along_axis(s, top, 1); ci = top + start
    allS = np.concatenate([best_s, cs], 1); allI = np.concatenate([best_i, ci], 1)
    o = np.argsort(-allS, 1)[:, :10]
    best_s = np.take_along_axis(allS, o, 1); best_i = np.take_along_axis(allI, o, 1)
np.save(d + '/truth.npy', best_i)
"""

# one process, the same factory and sample: the build's planner picks `train_size` rows
# (and the tuning queries) with numpy's default_rng(seed)
TWIN = """
import glob, json, sys, time
import faiss, numpy as np, pyarrow.parquet as pq
from embedlib.index.faiss_ops import new_index
root, parts = sys.argv[1], sorted(glob.glob(sys.argv[2] + '/*.parquet'))
m = json.load(open(root + '/versions/' + open(root + '/CURRENT').read().strip() + '/manifest.json'))
plan, n = m['plan'], m['ntotal']
faiss.omp_set_num_threads(0 or __import__('os').cpu_count())
def rows(path):
    t = pq.read_table(path, columns=['vector'])
    return np.asarray(t.column('vector').combine_chunks().values).reshape(-1, 384)
start = time.perf_counter()
rng = np.random.default_rng(m['seed'])
q = min(500, n)
picks = rng.choice(n, size=min(n, plan['train_size'] + q), replace=False)
train_ids = np.sort(picks[:plan['train_size']])
sample, offset = [], 0
for p in parts:
    x = rows(p)
    here = train_ids[(train_ids >= offset) & (train_ids < offset + len(x))] - offset
    sample.append(x[here]); offset += len(x)
index = new_index(384, m['factory'], faiss.METRIC_INNER_PRODUCT)
if not index.is_trained:
    index.train(np.concatenate(sample))
offset = 0
for p in parts:
    x = rows(p)
    index.add_with_ids(x, np.arange(offset, offset + len(x)))
    offset += len(x)
print(json.dumps({'seconds': time.perf_counter() - start, 'ntotal': int(index.ntotal)}))
"""


def _tree_rss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/v1/search", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def _serve(
    root: Path, port: int, queries: np.ndarray, truth: np.ndarray, env: dict[str, str]
) -> dict[str, float]:
    emb = str(Path(sys.executable).parent / "embedlib")
    log = open(root.parent / f"serve-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([emb, "serve", str(root), "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        ready_s = wait_ready(url, proc, 900, f"the server (see {log.name})")
        rows = [q.tolist() for q in queries]
        for i in range(1000):
            _post(url, {"vector": rows[i % len(rows)], "k": 10})
        rss = _tree_rss_mb(proc.pid)
        recall: dict[str, float] = {}
        lat = []
        for label, extra in (("rescored", {}), ("codes only", {"rescore": 0})):
            hits = 0
            for q, t in zip(rows, truth, strict=True):
                t1 = time.perf_counter()
                got = _post(url, {"vector": q, "k": 10, **extra})["results"]
                if not extra:
                    lat.append(time.perf_counter() - t1)
                hits += len({h["id"] for h in got} & {f"v{i}" for i in t})
            recall[label] = hits / (10 * len(rows))
        done, stop = [0], time.perf_counter() + 20

        def client(j: int) -> None:
            while time.perf_counter() < stop:
                _post(url, {"vector": rows[(j * 13 + done[0]) % len(rows)], "k": 10})
                done[0] += 1

        threads = [threading.Thread(target=client, args=(j,)) for j in range(16)]
        t2 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        qps = done[0] / (time.perf_counter() - t2)
    finally:
        os.killpg(proc.pid, 2)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()
    return {"rss_mb": rss, "ready_s": ready_s, "p50_ms": statistics.median(lat) * 1000,
            "qps": qps, **{f"recall {k}": v for k, v in recall.items()}}  # fmt: skip


def scale_rows(work: Path, vectors: int, env: dict[str, str]) -> list[list[str]]:
    py = sys.executable
    gen = subprocess.run(
        [py, "-c", GENERATE, str(vectors), str(work)], capture_output=True, text=True
    )
    if gen.returncode:
        raise SystemExit("generating the vectors failed:\n" + gen.stderr[-2000:])
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    emb = str(Path(py).parent / "embedlib")
    rows = []
    for n, compress in enumerate(COMPRESSIONS):
        root = work / f"idx-{compress}"
        budget = str(vectors * (4 * D + 100) + 10**8)  # room for the codes asked for
        cmd = [emb, "index", str(work / "parts"), str(root), "--metric", "cosine", "--shards", "4",
               "--compress", compress, "--memory-budget", budget, "--no-progress"]  # fmt: skip
        pss, rss, _, build_s = peak_memory(cmd, env)
        version = root / "versions" / (root / "CURRENT").read_text().strip()
        manifest = json.loads((version / "manifest.json").read_text())
        disk = sum(f.stat().st_size for f in version.iterdir())
        twin = subprocess.run([py, "-c", TWIN, str(root), str(work / "parts")], capture_output=True,
                              text=True, env=env)  # fmt: skip
        if twin.returncode:
            raise SystemExit("the one-process FAISS build failed:\n" + twin.stderr[-2000:])
        twin_s = json.loads(twin.stdout.strip().splitlines()[-1])["seconds"]
        served = _serve(root, 18700 + n, queries, truth, env)
        what = f"scale {vectors:,} x {D}, --compress {compress}"
        store = manifest.get("vectors", {}).get("dtype")
        rows.append([
            f"{what}: build ({manifest['factory']}, vectors {store}; {manifest['search_params']})",
            f"{build_s:.0f} s", f"{build_s / twin_s:.2f}x of one-process FAISS ({twin_s:.0f} s)",
            f"peak {rss / 1024:.1f} GB RSS, {pss / 1024:.1f} GB PSS", "",
            f"{disk / vectors:.0f} B/vector on disk; build-time recall@10 {manifest['recall_at_10']}",
        ])  # fmt: skip
        rows.append([
            f"{what}: serve (1,000 warm-up queries, then 200)",
            f"ready in {served['ready_s']:.0f} s", "",
            f"p50 {served['p50_ms']:.1f} ms, {served['qps']:.0f} q/s at 16 clients", "",
            f"{served['rss_mb'] / 1024:.2f} GB resident ({served['rss_mb'] * 2**20 / vectors:.0f} "
            f"B/vector); recall@10 {served['recall rescored']:.3f} rescored, "
            f"{served['recall codes only']:.3f} codes only",
        ])  # fmt: skip
    return rows
