"""Small helpers over fsspec filesystems, shared by embedding sets and indexes."""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import uuid
from typing import Any

import fsspec

MANIFEST = "manifest.json"  # an embedding set's, and an index version's


def utc_now() -> str:
    """The time now as ISO 8601 in UTC, as manifests record it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is this machine's own filesystem (renames are atomic, paths are real)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def write_json_atomic(fs: fsspec.AbstractFileSystem, path: str, data: Any) -> None:
    """Write JSON next to `path`, then move it into place, so readers see all or nothing."""
    folder, name = posixpath.dirname(path), posixpath.basename(path)
    tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    with fs.open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    fs.mv(tmp, path)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "r") as fh:
        return json.load(fh)


def file_sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def human(nbytes: float) -> str:
    """A byte count for people: 83.6MB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000:
            return f"{nbytes:.1f}{unit}"
        nbytes /= 1000
    return f"{nbytes:.1f}PB"
