"""Memory rows of the suite: peak memory of the embed job and the index build, 1x and 10x.

Each job runs as `embedlib embed|index` in its own process, which starts its own local
Ray instance: every Ray process (GCS, raylet, workers) descends from it. The process
tree is sampled every 0.2 s; a sample sums PSS over the tree (RSS with each shared page
split between the processes that map it, so Ray's shared object store and the shared
model files count once) and RSS (which counts them in every process).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil


def peak_memory(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, float]:
    """Run `cmd`; (peak summed PSS MB, its RSS sum MB, its process count, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak_pss = peak_rss = 0.0
    peak_processes = 0
    while proc.poll() is None:
        pss = rss = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a worker that just exited
            pss += info.pss
            rss += info.rss
        if pss / 2**20 > peak_pss:
            peak_pss, peak_rss, peak_processes = pss / 2**20, rss / 2**20, len(tree)
        time.sleep(0.2)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{err.decode()[-2000:]}")
    return peak_pss, peak_rss, peak_processes, time.perf_counter() - start


def memory_rows(
    work: Path, py: str, env: dict[str, str], docs: int, vectors: int
) -> list[list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.__main__ import _corpus, _synthetic

    rows = []
    runs = []
    for scale in (1, 10):
        corpus = work / f"mem-corpus-{scale}.parquet"
        _corpus(docs * scale, corpus)
        cmd = [py, "-m", "embedlib.cli", "embed", str(corpus), str(work / f"mem-emb-{scale}"),
               "--no-progress"]  # fmt: skip
        runs.append((f"embed job, {docs * scale} docs", scale, peak_memory(cmd, env)))
    for scale in (1, 10):
        n = vectors * scale
        path = work / f"mem-vectors-{scale}.parquet"
        x = _synthetic(n, 50)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 50)
        ids = pa.array([str(i) for i in range(n)])
        # row groups of 50k rows, as embedlib writes embedding sets: a reader can stream
        pq.write_table(pa.table({"id": ids, "vector": vec}), path, row_group_size=50_000)
        cmd = [py, "-m", "embedlib.cli", "index", str(path), str(work / f"mem-idx-{scale}"),
               "--shards", "2", "--no-progress"]  # fmt: skip
        runs.append((f"index build, {n // 1000}k x 50 vectors", scale, peak_memory(cmd, env)))
    for n, (what, scale, (pss, rss, processes, seconds)) in enumerate(runs):
        base = runs[n - 1][2][0] if scale == 10 else pss
        rows.append([
            f"memory: {what}", f"{seconds:.1f} s", "", f"peak {pss:.0f} MB (PSS summed)",
            f"{pss / base:.2f}x of 1x" if scale == 10 else "1x",
            f"{processes} processes, RSS summed {rss:.0f} MB",
        ])  # fmt: skip
    return rows
