"""Ray Data interop: a Ray Data pipeline with `Embedder` gives the vectors `embedlib
embed` gives, and `write_embedding_set` writes a set `embedlib index` takes, answering
as the embed job's does."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from embedlib import EmbeddingSet, EmbedOptions, RunOptions, ShardedIndex, build_index, embed_corpus
from embedlib.embed.documents import CHUNK, ID
from embedlib.exceptions import SourceError
from embedlib.ray_data import Embedder, write_embedding_set
from tests import corpora

pytestmark = pytest.mark.usefixtures("ray_cluster")
LOCAL = RunOptions(runner="local", progress=False)


def _keyed(path: str) -> dict[tuple[str, int], np.ndarray]:
    table = EmbeddingSet(path).read_table()
    chunks = table.column(CHUNK).to_pylist() if CHUNK in table.column_names else [0] * len(table)
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    return dict(zip(zip(table.column(ID).to_pylist(), chunks, strict=True), vectors, strict=True))


def test_a_ray_data_pipeline_embeds_as_the_embed_job_does(tmp_path):
    import ray

    texts = corpora.sentences(60, seed=3)
    long = " ".join(corpora.sentences(40, seed=4))  # several chunks
    rows = [{"id": f"d{i}", "text": t, "lang": ["en", "de"][i % 2]} for i, t in enumerate(texts)]
    rows.append({"id": "long", "text": long, "lang": "en"})
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = {"model": "default", "text_column": "text", "chunking": "auto", "chunk_tokens": 64}
    embed_corpus(str(tmp_path / "docs.jsonl"), str(tmp_path / "job"),
                 options=EmbedOptions(**options), run=LOCAL)  # fmt: skip
    ds = ray.data.from_items(rows).map_batches(
        Embedder, fn_constructor_kwargs=options, concurrency=1, batch_size=16,
        batch_format="pyarrow", num_cpus=0.5,
    )  # fmt: skip
    manifest = write_embedding_set(ds, str(tmp_path / "pipeline"), embedder=options)
    job = EmbeddingSet(str(tmp_path / "job"))
    assert manifest.model.name == job.manifest.model.name
    assert manifest.model.weights_sha256 == job.manifest.model.weights_sha256
    assert manifest.chunking == job.manifest.chunking and manifest.documents == len(rows)
    a, b = _keyed(str(tmp_path / "job")), _keyed(str(tmp_path / "pipeline"))
    assert a.keys() == b.keys() and sum(1 for k in a if k[0] == "long") > 3
    cos = [float(a[k] @ b[k] / np.linalg.norm(a[k]) / np.linalg.norm(b[k])) for k in a]
    assert min(cos) >= 0.9999
    for name in ("job", "pipeline"):
        build_index(str(tmp_path / name), str(tmp_path / f"{name}-idx"), run=LOCAL)
    x, y = ShardedIndex(str(tmp_path / "job-idx")), ShardedIndex(str(tmp_path / "pipeline-idx"))
    queries = [*texts[:5], "a long walk", "numbers and tables"]
    for hx, hy in zip(x.search_text(queries, 5), y.search_text(queries, 5), strict=True):
        assert [h.id for h in hx] == [h.id for h in hy]
        assert [h.metadata for h in hx] == [h.metadata for h in hy]


def test_any_dataset_of_vectors_becomes_an_embedding_set(tmp_path, glove):
    """GloVe words as id + numpy vectors (Ray Data's tensor type): written as a set of
    static vectors, indexed, king - man + woman answers queen."""
    import ray

    _, words, vectors = glove
    n = 20_000
    ds = ray.data.from_arrow(pa.table({"id": words[:n], "rank": np.arange(n)})).map_batches(
        lambda b: {**b, "vector": vectors[b["rank"]]}, batch_size=5000
    )
    manifest = write_embedding_set(ds, str(tmp_path / "words"), name="glove-6b-50d")
    assert manifest.model.precision == "static" and manifest.dim == 50
    assert manifest.documents == n
    build_index(str(tmp_path / "words"), str(tmp_path / "idx"), run=LOCAL)
    hits = ShardedIndex(str(tmp_path / "idx")).most_similar(positive=["king", "woman"],
                                                             negative=["man"], k=1)  # fmt: skip
    assert hits[0].id == "queen"
    with pytest.raises(SourceError, match="needs columns"):
        write_embedding_set(ray.data.from_items([{"x": 1}]), str(tmp_path / "bad"))


@pytest.mark.slow  # its own Ray instance on the machine's CPUs: about a minute
def test_the_readme_pipeline_runs_as_written_on_this_machine(tmp_path):
    """The README's Ray Data example, taken from the README and run unchanged in a
    process of its own (its own Ray instance, every CPU of the machine) on 1,500 short
    texts: it finishes (on 2 CPUs, two 1-CPU Embedder actors once held both CPUs and the
    reads never ran) and writes the embedding set it says."""
    import os
    import re
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = next(
        block for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
        if "from embedlib.ray_data import Embedder" in block
    )  # fmt: skip
    (tmp_path / "corpus").mkdir()
    texts = corpora.sentences(1500, seed=8)
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(1500)], "text": texts}),
                   tmp_path / "corpus" / "part.parquet")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # a Ray temp dir of its own (short: Ray's socket paths live under it), so a cluster
    # recorded by another `ray start` on this machine, live or dead, is not joined
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    try:
        done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"},
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert EmbeddingSet(str(tmp_path / "out" / "embeddings")).manifest.documents == 1500
