"""Multi-node behaviour on one machine: a real Ray head and worker nodes, started in a
process of their own. A worker node is killed in the middle of embedding (and a new one
joins), of index building, and under a served index; a node that cannot see the output
is refused. Outputs must equal runs without the failure."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedlib import EmbeddingSet, EmbedOptions, RunOptions, embed_corpus
from embedlib.index import IndexOptions, build_index

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # multi-node: a cluster of its own per scenario


def _scenario(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run(
        [sys.executable, "tests/cluster_scenarios.py", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_worker_node_killed_mid_embedding(tmp_path):
    result = _scenario("embed-kill", str(tmp_path))
    assert result["killed"], "the job ended before a node could be killed"
    assert result["rc"] == 0, result["log"]
    # the report names each node's work; the node that joined mid-job took some of it
    joined = [line for line in result["report"] if result["joined"][:12] in line]
    assert joined and re.search(r": [1-9]\d* splits", joined[0]), result["report"]
    got = EmbeddingSet(str(tmp_path / "out"))
    ids, vectors = got.read_vectors()
    assert sorted(ids) == sorted(f"d{i}" for i in range(3000))  # none missing, none twice
    options = EmbedOptions(text_column="body", id_column="doc_id", split_rows=60)
    embed_corpus(
        str(tmp_path / "corpus.jsonl"),
        str(tmp_path / "ref"),
        options=options,
        run=RunOptions(runner="local", progress=False),
    )
    ref_ids, ref_vectors = EmbeddingSet(str(tmp_path / "ref")).read_vectors()
    order = {i: n for n, i in enumerate(ref_ids)}
    aligned = ref_vectors[[order[i] for i in ids]]
    assert (vectors * aligned).sum(1).min() >= 0.9999


def test_worker_node_killed_mid_index_build(tmp_path, glove):
    _, words, vectors = glove
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 200_000
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors[:n].reshape(-1)), 50)
    pq.write_table(
        pa.table({"id": words[:n], "vector": vec}), tmp_path / "g.parquet", row_group_size=50_000
    )
    result = _scenario("index-kill", str(tmp_path), str(tmp_path / "g.parquet"))
    assert result["killed"], "no add task was seen running"
    ref = build_index(
        str(tmp_path / "g.parquet"),
        str(tmp_path / "ref"),
        options=IndexOptions(shards=2, seed=3),
        run=RunOptions(runner="local", progress=False),
    )
    manifest = json.loads(
        (tmp_path / "ref" / "versions" / ref.version / "manifest.json").read_text()
    )
    assert result["shards"] == [[s["count"], s["sha256"]] for s in manifest["shards"]]
    assert np.isclose(result["recall"], manifest["recall_at_10"])
    # the report's per-node counts cover every vector once (the lost node's tasks were redone)
    assert sum(s["vectors"] for s in result["per_node"].values()) == n


@pytest.mark.skipif(
    subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0,
    reason="needs mount namespaces (unshare -m) to give one node a disk of its own",
)
def test_job_refuses_an_output_that_a_worker_node_cannot_see(tmp_path):
    result = _scenario("blind-node", str(tmp_path))
    assert result["blind"][:12] in result["error"], result  # names the node that cannot see it
    assert result["head"][:12] not in result["error"], result
    assert "cannot see" in result["error"] and "s3://" in result["error"]
    assert result["left"] == [], result  # refused before anything was written


def test_serve_replica_on_a_lost_node_is_replaced_while_queries_succeed(tmp_path):
    result = _scenario("serve-node-lost", str(tmp_path))
    assert result["spread"] == 2, result  # the two replicas ran on two nodes
    assert result["n_failures"] == 0, result["failures"]
    assert result["answers"] > result["answers_before_kill"] > 0
    assert result["wrong"] == 0
    assert result["gateways_on_head"], result
    after = result["replicas_after"]
    assert len(after) == 2 and result["victim"] not in after, result  # replaced elsewhere
