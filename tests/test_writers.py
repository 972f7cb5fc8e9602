"""Writers of one index root: version names taken atomically by concurrent publishers
(real processes), builds publishing under the index lock, an empty lock taken over, and
gc leaving a live build's staging folder alone."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import RunOptions
from embedlib.index import build_index
from embedlib.index.store.layout import list_versions, published_version
from embedlib.index.update.gc import gc_versions

LOCAL = RunOptions(runner="local", progress=False)
ROOT = Path(__file__).resolve().parents[1]

PUBLISHER = """
import sys, time, fsspec
from pathlib import Path
from embedlib.index.store.layout import publish
root, tag, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
fs = fsspec.filesystem("file")
stagings = []
for i in range(n):
    staging = Path(root, "versions", f".staging-{tag}-{i}")
    staging.mkdir(parents=True)
    (staging / "manifest.json").write_text(f'{{"by": "{tag}", "n": {i}}}')
    stagings.append(str(staging))
while time.time() < start:  # both processes publish from the same instant
    pass
for staging in stagings:
    publish(fs, root, staging)
"""


@pytest.fixture
def vectors(tmp_path) -> str:
    rng = np.random.default_rng(0)
    table = pa.table({"id": [f"v{i}" for i in range(300)],
                      "vector": list(rng.standard_normal((300, 16)).astype(np.float32))})  # fmt: skip
    pq.write_table(table, tmp_path / "v.parquet")
    return str(tmp_path / "v.parquet")


def test_concurrent_publishers_never_share_a_version(tmp_path):
    root = tmp_path / "idx"
    (root / "versions").mkdir(parents=True)
    start = str(time.time() + 5)
    procs = [
        subprocess.Popen([sys.executable, "-c", PUBLISHER, str(root), tag, "40", start], cwd=ROOT)
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    names = list_versions(__import__("fsspec").filesystem("file"), str(root))
    assert len(names) == 80  # every publish got a version of its own, none nested
    seen = set()
    for name in names:
        folder = root / "versions" / name
        assert sorted(os.listdir(folder)) == ["manifest.json"]
        record = json.loads((folder / "manifest.json").read_text())
        seen.add((record["by"], record["n"]))
    assert len(seen) == 80
    assert published_version(str(root)) in names


def test_two_builds_at_once_publish_two_complete_versions(tmp_path, vectors):
    root = str(tmp_path / "idx")
    code = (
        "import sys; from embedlib import RunOptions; from embedlib.index import build_index; "
        "build_index(sys.argv[1], sys.argv[2], run=RunOptions(runner='local', progress=False))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, vectors, root], cwd=ROOT)
             for _ in range(2)]  # fmt: skip
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    versions = list_versions(__import__("fsspec").filesystem("file"), root)
    assert versions == ["v-00001", "v-00002"]
    for name in versions:  # every file the manifest lists is there, with its checksum
        folder = Path(root, "versions", name)
        manifest = json.loads((folder / "manifest.json").read_text())
        for shard in manifest["shards"]:
            for file, digest in ((shard["file"], shard["sha256"]),
                                 (shard["docs"], shard["docs_sha256"])):  # fmt: skip
                assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest
    assert published_version(root) in versions


def test_an_empty_lock_is_taken_over_and_gc_leaves_live_staging_alone(tmp_path, vectors):
    root = tmp_path / "idx"
    for _ in range(3):
        build_index(vectors, str(root), run=LOCAL)
    (root / ".lock").write_bytes(b"")  # a crash between creating the lock and writing it
    live = root / "versions" / ".staging-live"
    old = root / "versions" / ".staging-old"
    for folder in (live, old):
        folder.mkdir()
        (folder / "part").write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    for path in (old / "part", old):
        os.utime(path, (two_hours_ago, two_hours_ago))
    removed = gc_versions(str(root), keep=1, retain_s=0)
    assert sorted(removed) == [".staging-old", "v-00001", "v-00002"]
    assert live.exists() and not (root / ".lock").exists()
    assert published_version(str(root)) == "v-00003"


@pytest.mark.parametrize("name", ["../../outside.faiss", "/etc/passwd", "sub/shard.faiss", ".."])
def test_a_manifest_naming_files_outside_its_version_is_refused(tmp_path, vectors, name):
    from embedlib import ShardedIndex

    root = tmp_path / "idx"
    build_index(vectors, str(root), run=LOCAL)
    path = root / "versions" / "v-00001" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["file"] = name
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a plain file name"):
        ShardedIndex(str(root))


HOLDER = """
import json, sys, time, fsspec
from pathlib import Path
from embedlib.exceptions import LockLostError
from embedlib.index.store.layout import publish
from embedlib.index.store.lock import index_lock
root, go = sys.argv[1], Path(sys.argv[2])
fs = fsspec.filesystem("file")
staging = Path(root, "versions", ".staging-held")
staging.mkdir(parents=True)
(staging / "manifest.json").write_text("{}")
with index_lock(fs, root, what="retrain", beat_s=0.2) as lease:
    print("held", flush=True)
    while not go.exists():
        time.sleep(0.05)
    try:
        publish(fs, root, str(staging), lease)
    except LockLostError as e:
        print("lost:", e, flush=True)
        sys.exit(3)
"""


def test_a_holder_that_lost_its_lock_cannot_publish(tmp_path):
    """The holder is paused (SIGSTOP) past the stale timeout, another writer takes the lock
    over; resumed, the holder's publish is refused by the fencing check."""
    import signal

    import fsspec

    from embedlib.index.store.lock import LOCK, index_lock

    root = tmp_path / "idx"
    (root / "versions").mkdir(parents=True)
    go = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(go)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGSTOP)  # its heartbeat stops with it
    try:
        time.sleep(1.5)
        fs = fsspec.filesystem("file")
        with index_lock(fs, str(root), stale_after_s=1.0, what="update") as lease:
            assert json.loads((root / LOCK).read_text())["token"] == lease.token
            proc.send_signal(signal.SIGCONT)
            go.touch()
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 3, out
            assert "lost the lock" in out
            # the holder's exit left this writer's lock alone
            assert json.loads((root / LOCK).read_text())["token"] == lease.token
    finally:
        proc.send_signal(signal.SIGCONT)
    assert list_versions(fs, str(root)) == [] and not (root / "CURRENT").exists()


TAKER = """
import os, sys, time, fsspec
from embedlib.index.store.lock import index_lock
root, log, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
fs = fsspec.filesystem("file")
while time.time() < start:
    pass
with index_lock(fs, root, wait_s=120, what="update"):
    began = time.time()
    time.sleep(0.5)
    ended = time.time()
with open(log, "a") as fh:
    fh.write(f"{began} {ended}\\n")
"""


def test_a_stale_lock_is_taken_over_by_one_writer_at_a_time(tmp_path):
    """Four processes find the same stale lock at the same instant: the takeover is a
    compare-and-swap, so their holdings never overlap."""
    root = tmp_path / "idx"
    root.mkdir()
    stale = {"token": "dead", "host": "gone", "pid": 1, "what": "update", "since": 0, "beat": 0}
    (root / ".lock").write_text(json.dumps(stale))
    log = tmp_path / "held.log"
    start = str(time.time() + 4)
    procs = [subprocess.Popen([sys.executable, "-c", TAKER, str(root), str(log), start], cwd=ROOT)
             for _ in range(4)]  # fmt: skip
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(spans) == 4
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert begin >= end  # one holder at a time
    assert not (root / ".lock").exists() and not list(root.glob(".lock.takeover-*"))
