"""Multi-node scenarios, each run in a process of its own with a real Ray cluster on this
machine (a head and two worker nodes, `ray.cluster_utils.Cluster`), apart from the test
session's Ray instance. Prints one JSON line with what it saw.

    python tests/cluster_scenarios.py embed-kill WORKDIR
    python tests/cluster_scenarios.py index-kill WORKDIR GLOVE_PARQUET
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
    cluster.wait_for_nodes()
    return cluster, workers


def embed_kill(work: Path) -> dict:
    """Kill a worker node once shards are being committed; the job must still finish."""
    from tests import corpora

    (work / "corpus.jsonl").write_bytes(corpora.to_bytes(corpora.table(1200, seed=11), "jsonl"))
    cluster, workers = _cluster()
    try:
        args = [sys.executable, "-m", "embedlib.cli", "embed", str(work / "corpus.jsonl"), str(work / "out"),
                "--text-column", "body", "--id-column", "doc_id", "--shard-rows", "60", "--address", cluster.address,
                "--no-progress"]  # fmt: skip
        log = open(work / "job.log", "w")  # noqa: SIM115 - the job writes to it until it ends
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        killed = False
        deadline = time.time() + 900
        while proc.poll() is None and time.time() < deadline:
            if not killed and len(glob.glob(str(work / "out" / "_commits" / "*.json"))) >= 2:
                cluster.remove_node(workers[1], allow_graceful=False)
                killed = True
            time.sleep(0.2)
        rc = proc.wait(timeout=60)
    finally:
        cluster.shutdown()
    return {"rc": rc, "killed": killed, "log": (work / "job.log").read_text()[-3000:]}


def index_kill(work: Path, glove: str) -> dict:
    """Kill a worker node while add tasks run; the index must equal a build without it."""
    import ray

    from embedlib import RunOptions
    from embedlib.index import IndexOptions, build_index

    cluster, workers = _cluster()
    killed: list[bool] = []

    def kill_when_adding() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
            if "ray::_add_units" in out:
                cluster.remove_node(workers[1], allow_graceful=False)
                killed.append(True)
                return
            time.sleep(0.05)

    try:
        ray.init(address=cluster.address, log_to_driver=False)
        killer = threading.Thread(target=kill_when_adding)
        killer.start()
        report = build_index(
            glove,
            str(work / "idx"),
            options=IndexOptions(shards=2, seed=3),
            run=RunOptions(progress=False),
        )
        killer.join()
        ray.shutdown()
    finally:
        cluster.shutdown()
    manifest = json.loads(
        (work / "idx" / "versions" / report.version / "manifest.json").read_text()
    )
    return {
        "killed": bool(killed),
        "shards": [[s["count"], s["sha256"]] for s in manifest["shards"]],
        "recall": manifest["recall_at_10"],
    }


if __name__ == "__main__":
    name, work = sys.argv[1], Path(sys.argv[2])
    result = embed_kill(work) if name == "embed-kill" else index_kill(work, sys.argv[3])
    print(json.dumps(result))
