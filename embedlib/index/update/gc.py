"""gc of an index's old versions and leftover staging folders, under the index lock."""

from __future__ import annotations

import logging
import posixpath
import time
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from embedlib.index.store.layout import list_versions, resolve, versions_dir
from embedlib.index.store.lock import index_lock

log = logging.getLogger(__name__)
LIVE_STAGING_S = 3600.0  # gc leaves staging folders written to more recently than this


def gc_versions(
    index: str, *, keep: int = 2, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Remove all but the newest `keep` versions (never the published one) and leftover
    staging folders; returns what was removed. Takes the index lock."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    fs, root = url_to_fs(index, **(storage_options or {}))
    root = root.rstrip("/")
    removed: list[str] = []
    with index_lock(fs, root, what="gc"):
        current = posixpath.basename(resolve(fs, root))
        versions = list_versions(fs, root)
        for name in versions[: max(0, len(versions) - keep)]:
            if name != current:
                fs.rm(posixpath.join(versions_dir(root), name), recursive=True)
                removed.append(name)
        for path in fs.ls(versions_dir(root), detail=False):
            name = posixpath.basename(path.rstrip("/"))
            if not name.startswith(".staging-"):
                continue
            if _touched_within(fs, path, LIVE_STAGING_S):  # a build still writing it
                log.info("gc: leaving %s, written to in the last %.0f s", name, LIVE_STAGING_S)
                continue
            fs.rm(path, recursive=True)
            removed.append(name)
    return removed


def _touched_within(fs: fsspec.AbstractFileSystem, folder: str, seconds: float) -> bool:
    """Whether any file under `folder` was modified in the last `seconds`."""
    newest = 0.0
    for info in fs.find(folder, detail=True, withdirs=True).values():
        stamp = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
        newest = max(newest, stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp))
    return time.time() - newest < seconds
