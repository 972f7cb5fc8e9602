"""The local cache of remote index files: private, verified on entry, shared by content,
least recently used evicted past its budget."""

from __future__ import annotations

import hashlib
import os
import stat
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedlib import RunOptions, ShardedIndex, build_index
from embedlib.cache import FileCache, private_dir
from embedlib.exceptions import StorageError

LOCAL = RunOptions(runner="local", progress=False)


def test_a_damaged_remote_file_is_refused_and_never_enters_the_cache(memfs, tmp_path):
    fs, url = memfs
    rng = np.random.default_rng(0)
    table = pa.table({"id": [f"v{i}" for i in range(200)],
                      "vector": list(rng.standard_normal((200, 8)).astype(np.float32))})  # fmt: skip
    with fs.open(f"{url}/v.parquet", "wb") as fh:
        pq.write_table(table, fh)
    build_index(f"{url}/v.parquet", f"{url}/idx", run=LOCAL)
    index = ShardedIndex(f"{url}/idx", cache=FileCache(tmp_path / "good", budget_bytes=10**9))
    entry = index.manifest.shards[0]
    shard = f"{url}/idx/versions/{index.version.name}/{entry.file}"
    data = bytearray(fs.cat(shard))
    data[-1] ^= 0xFF  # one flipped bit in the stored shard
    fs.pipe(shard, bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(StorageError, match="does not match the checksum"):
        ShardedIndex(f"{url}/idx", cache=FileCache(cache, budget_bytes=10**9))
    kept = [p.name for p in cache.iterdir()]  # the damaged file not kept, no partial copy
    assert not [n for n in kept if n.endswith(entry.file) or n.startswith(".")], kept
    # the copy verified before the damage is still served from the other cache
    again = ShardedIndex(f"{url}/idx", cache=FileCache(tmp_path / "good", budget_bytes=10**9))
    assert len(again.search(rng.standard_normal((1, 8)).astype(np.float32), 3)[0]) == 3


def test_least_recently_used_files_are_evicted_past_the_budget(memfs, tmp_path):
    fs, url = memfs
    blobs = {name: os.urandom(1000) for name in "abc"}
    digests = {}
    for name, blob in blobs.items():
        fs.pipe(f"{url}/{name}", blob)
        digests[name] = hashlib.sha256(blob).hexdigest()
    cache = FileCache(tmp_path / "cache", budget_bytes=2500, grace_s=0)

    def get(name: str) -> str:
        path = cache.get(fs, f"{url}/{name}", digests[name])
        time.sleep(0.01)  # distinct use times
        return path

    for name in "abc":
        get(name)
    assert sorted(p.name[-1] for p in cache.folder.iterdir()) == ["b", "c"]  # a went first
    get("b")  # used again: now c is the oldest
    with open(get("a"), "rb") as fh:
        assert fh.read() == blobs["a"]
    assert sorted(p.name[-1] for p in cache.folder.iterdir()) == ["a", "b"]


def test_a_file_just_handed_out_is_not_evicted(memfs, tmp_path):
    """Two caches on one folder (two replicas on one node): one is handed a's path, then
    the other's download of b goes over the budget; a, used within the grace period, is
    still there to open. Once a is older than that, it is the one evicted."""
    fs, url = memfs
    blobs = {name: os.urandom(1000) for name in "abc"}
    for name, blob in blobs.items():
        fs.pipe(f"{url}/{name}", blob)
    digest = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    first, second = (FileCache(tmp_path / "cache", budget_bytes=1500) for _ in range(2))
    handed = first.get(fs, f"{url}/a", digest["a"])
    second.get(fs, f"{url}/b", digest["b"])  # over the budget, a within the grace period
    with open(handed, "rb") as fh:
        assert fh.read() == blobs["a"]
    old = time.time() - 2 * first.grace_s
    os.utime(handed, (old, old))
    second.get(fs, f"{url}/c", digest["c"])
    assert sorted(p.name[-1] for p in second.folder.iterdir()) == ["b", "c"]


def test_the_cache_folder_is_private(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    private_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_leftover_partial_copies_are_cleaned_and_a_bad_checksum_name_is_refused(memfs, tmp_path):
    """A `.incoming-*` copy left by a killed process goes once it is an hour old (a fresh
    one may still be written); a manifest's sha256 that is not 64 hex digits (it becomes
    part of a file name) is refused before anything is copied."""
    fs, url = memfs
    fs.pipe(f"{url}/a.bin", b"x" * 100)
    cache = FileCache(tmp_path / "c", budget_bytes=10**9)
    folder = private_dir(tmp_path / "c")
    old, fresh = folder / ".incoming-old", folder / ".incoming-fresh"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    cache.get(fs, f"{url}/a.bin", hashlib.sha256(b"x" * 100).hexdigest())
    assert not old.exists() and fresh.exists()
    for bad in ("../../etc/passwd", "", "A" * 64):
        with pytest.raises(StorageError, match="not 64 hex digits"):
            cache.get(fs, f"{url}/a.bin", bad)
