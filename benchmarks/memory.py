"""Memory rows of the suite: peak memory of the embed job and the index build, 1x and 10x.

Each job runs as `embedlib embed|index` in its own process, which starts its own local
Ray instance: every Ray process (GCS, raylet, workers) descends from it. The process
tree is sampled every 0.2 s; a sample sums PSS over the tree (RSS with each shared page
split between the processes that map it, so Ray's shared object store and the shared
model files count once) and RSS (which counts them in every process).
"""

from __future__ import annotations

import os
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


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, what: str) -> float:
    """Seconds until the server at `url` answers /readyz with 200; SystemExit naming
    `what` when its process ends or `timeout_s` passes first."""
    import urllib.request

    started = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - started > timeout_s:
            raise SystemExit(f"{what} never became ready")
        time.sleep(1)


def _served_memory(py: str, env: dict[str, str], args: list[str], port: int,
                   queries: list[str]) -> tuple[float, float]:  # fmt: skip
    """`embedlib serve ARGS` on its own Ray: once every collection has answered a text
    query, (the gateway replica's PSS MB, the whole process tree's PSS MB)."""
    import json
    import signal
    import urllib.request

    proc = subprocess.Popen([py, "-m", "embedlib.cli", "serve", *args, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 300, f"embedlib serve {' '.join(args)}")
        for path in queries:
            body = json.dumps({"query": "how to train a neural net", "k": 3}).encode()
            req = urllib.request.Request(url + path, data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            urllib.request.urlopen(req, timeout=60).read()
        time.sleep(2)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        gateway = total = 0.0
        for p in tree:
            try:
                pss = p.memory_full_info().pss / 2**20
                name = " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += pss
            if "Gateway" in name:
                gateway += pss
        return gateway, total
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)


def collection_rows(work: Path, py: str, env: dict[str, str], docs: int) -> list[list[str]]:
    """One server, one text collection against two of the same model: the second adds
    its shards and docs, not a second query model."""
    import shutil

    from benchmarks.__main__ import _corpus

    _corpus(docs, work / "coll-corpus.parquet")
    for cmd in (["embed", str(work / "coll-corpus.parquet"), str(work / "coll-emb")],
                ["index", str(work / "coll-emb"), str(work / "coll-a")]):  # fmt: skip
        subprocess.run([py, "-m", "embedlib.cli", *cmd, "--no-progress"], env=env, check=True,
                       capture_output=True)  # fmt: skip
    shutil.copytree(work / "coll-a", work / "coll-b")
    one = _served_memory(py, env, [f"a={work / 'coll-a'}"], 18611, ["/v1/search"])
    two = _served_memory(py, env, [f"a={work / 'coll-a'}", f"b={work / 'coll-b'}"], 18612,
                         ["/v1/collections/a/search", "/v1/collections/b/search"])  # fmt: skip
    return [
        [f"memory: serve, 1 text collection ({docs} docs)", "", "",
         f"gateway {one[0]:.0f} MB (PSS)", "1x", f"process tree {one[1]:.0f} MB (PSS)"],
        ["memory: serve, 2 text collections of one model", "", "",
         f"gateway {two[0]:.0f} MB (PSS)", f"{two[0] / one[0]:.2f}x of 1",
         f"process tree {two[1]:.0f} MB (PSS); one query model"],
    ]  # fmt: skip
