"""Multi-node scenarios, each run in a process of its own with a real Ray cluster on this
machine (a head and two worker nodes, `ray.cluster_utils.Cluster`), apart from the test
session's Ray instance. Prints one JSON line with what it saw.

    python tests/cluster_scenarios.py embed-kill WORKDIR
    python tests/cluster_scenarios.py index-kill WORKDIR GLOVE_PARQUET
    python tests/cluster_scenarios.py blind-node WORKDIR
    python tests/cluster_scenarios.py serve-node-lost WORKDIR
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
    """Kill a worker node once shards are being committed and add a fresh one: the job must
    still finish, and the node that joined mid-job must take work."""
    from tests import corpora

    (work / "corpus.jsonl").write_bytes(corpora.to_bytes(corpora.table(3000, seed=11), "jsonl"))
    cluster, workers = _cluster()
    try:
        args = [sys.executable, "-m", "embedlib.cli", "embed", str(work / "corpus.jsonl"), str(work / "out"),
                "--text-column", "body", "--id-column", "doc_id", "--split-rows", "60", "--address", cluster.address,
                "--no-progress", "--backend", "torch"]  # fmt: skip
        log = open(work / "job.log", "w")  # noqa: SIM115 - the job writes to it until it ends
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        killed, joined = False, None
        deadline = time.time() + 900
        while proc.poll() is None and time.time() < deadline:
            if not killed and len(glob.glob(str(work / "out" / "_commits" / "*.json"))) >= 2:
                cluster.remove_node(workers[1], allow_graceful=False)
                killed = True
                joined = cluster.add_node(num_cpus=1).node_id
            time.sleep(0.2)
        rc = proc.wait(timeout=60)
    finally:
        cluster.shutdown()
    log_text = (work / "job.log").read_text()
    report = [line for line in log_text.splitlines() if line.startswith("  node ")]
    return {"rc": rc, "killed": killed, "joined": joined, "report": report, "log": log_text[-3000:]}


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
            if "ray::add_units" in out:
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
        "per_node": report.per_node,
    }


def blind_node(work: Path) -> dict:
    """A worker node whose view of the output folder is a disk of its own (a mount namespace
    with a tmpfs over it, as on a second laptop): the job must refuse before any work."""
    import socket

    import ray
    from ray.cluster_utils import Cluster

    from embedlib import RunOptions, embed_corpus
    from embedlib.exceptions import StorageError

    (work / "corpus.txt").write_text("one document\nanother document\n")
    local_disk = work / "local-disk"
    local_disk.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        agent_port = sock.getsockname()[1]
    ray_cli = Path(sys.executable).parent / "ray"
    start = (f"mount -t tmpfs none {local_disk} && exec {ray_cli} start --block --num-cpus 1 "
             f"--address {cluster.address} --dashboard-agent-listen-port {agent_port}")  # fmt: skip
    node = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", start],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    error = ""
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        deadline = time.time() + 120
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.time() < deadline and node.poll() is None, "the second node never joined"
            time.sleep(1)
        head = cluster.head_node.node_id
        other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)
        try:
            embed_corpus(
                str(work / "corpus.txt"), str(local_disk / "out"), run=RunOptions(progress=False)
            )
        except StorageError as e:
            error = str(e)
        ray.shutdown()
    finally:
        os.killpg(node.pid, 15)
        node.wait(timeout=60)
        cluster.shutdown()
    left = (
        sorted(p.name for p in (local_disk / "out").iterdir())
        if (local_disk / "out").exists()
        else []
    )
    return {"error": error, "blind": other, "head": head, "left": left}


def serve_node_lost(work: Path) -> dict:
    """Serve an index with 2 replicas spread over two worker nodes, query it over HTTP
    without pause, and kill the node of one replica: every query must still be answered,
    and Serve must start a replacement on the node that is left."""
    import socket
    import urllib.request

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray import serve
    from ray.util.state import list_actors

    from embedlib import RunOptions
    from embedlib.index import IndexOptions, build_index
    from embedlib.serve.app import build_app
    from embedlib.serve.config import APP_NAME

    vectors = np.random.default_rng(5).standard_normal((2000, 16)).astype(np.float32)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 16)
    pq.write_table(
        pa.table({"id": [f"v{i}" for i in range(2000)], "vector": flat}), work / "v.parquet"
    )
    build_index(str(work / "v.parquet"), str(work / "idx"), options=IndexOptions(shards=2),
                run=RunOptions(runner="local", progress=False))  # fmt: skip
    cluster, workers = _cluster()
    head_id = cluster.head_node.node_id
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def query_without_pause() -> None:
        body = json.dumps({"vector": vectors[7].tolist(), "k": 3}).encode()
        while not stop.is_set():
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/search", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    answers.append(json.loads(r.read())["results"][0]["id"])
            except OSError as e:  # HTTPError included
                failures.append(repr(e))

    def searchers() -> list:
        return [a for a in list_actors(filters=[("state", "=", "ALIVE")])
                if a.class_name.endswith("ShardSearcher")]  # fmt: skip

    try:
        ray.init(address=cluster.address, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
        # grouped: searchers on worker nodes behind one gateway on the head (the placement
        # for which a lost worker node drops no request)
        serve.run(build_app(str(work / "idx"), replicas=2, placement="grouped"), name=APP_NAME)
        nodes = {a.node_id for a in searchers()}
        victim = next(w for w in workers if w.node_id in nodes)
        loader = threading.Thread(target=query_without_pause)
        loader.start()
        time.sleep(3)
        before = len(answers)
        cluster.remove_node(victim, allow_graceful=False)
        deadline = time.time() + 120  # until a replacement runs on the surviving node
        while time.time() < deadline:
            alive = searchers()
            if len(alive) == 2 and victim.node_id not in {a.node_id for a in alive}:
                break
            time.sleep(1)
        replaced = [a.node_id for a in searchers()]
        gateways = {a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")])
                    if a.class_name.endswith("Gateway")}  # fmt: skip
        time.sleep(2)
        stop.set()
        loader.join()
        serve.shutdown()
        ray.shutdown()
    finally:
        cluster.shutdown()
    return {
        "spread": len(nodes),
        "victim": victim.node_id,
        "replicas_after": replaced,
        "gateways_on_head": gateways == {head_id},
        "answers_before_kill": before,
        "answers": len(answers),
        "wrong": sum(a != "v7" for a in answers),
        "failures": failures[:5],
        "n_failures": len(failures),
    }


if __name__ == "__main__":
    name, work = sys.argv[1], Path(sys.argv[2])
    if name == "embed-kill":
        result = embed_kill(work)
    elif name == "index-kill":
        result = index_kill(work, sys.argv[3])
    elif name == "blind-node":
        result = blind_node(work)
    else:
        result = serve_node_lost(work)
    print(json.dumps(result))
