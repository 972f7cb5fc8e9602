"""gc of an index's old versions and leftover staging folders, under the index lock.

A version is removed only when nothing may still read it: not the published one, not one
a server holds a lease on (`store/leases.py`), not one younger than the retention period
(`retain_s`, default one hour, as Delta Lake's VACUUM retains files; a server opening a
version takes its lease within seconds), and not among the newest `keep` of the others.
"""

from __future__ import annotations

import logging
import posixpath
import time
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from embedlib.index.store.layout import list_versions, resolve, versions_dir
from embedlib.index.store.leases import LEASES, held_versions
from embedlib.index.store.lock import index_lock

log = logging.getLogger(__name__)
LIVE_STAGING_S = 3600.0  # gc leaves staging folders written to more recently than this
DEFAULT_RETAIN_S = 3600.0  # versions younger than this are kept


def gc_versions(
    index: str,
    *,
    keep: int = 2,
    retain_s: float = DEFAULT_RETAIN_S,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Remove old versions and leftover staging folders; returns what was removed.
    Kept: the published version, every version a server holds a lease on, every version
    younger than `retain_s`, and the newest `keep` of the versions nobody holds. Takes
    the index lock."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if retain_s < 0:
        raise ValueError(f"retain_s must be >= 0, got {retain_s}")
    fs, root = url_to_fs(index, **(storage_options or {}))
    root = root.rstrip("/")
    removed: list[str] = []
    with index_lock(fs, root, what="gc"):
        current = posixpath.basename(resolve(fs, root))
        held = held_versions(fs, root)
        free = [v for v in list_versions(fs, root) if v not in held]
        for name in free[: max(0, len(free) - keep)]:
            path = posixpath.join(versions_dir(root), name)
            if name == current:
                continue
            if _touched_within(fs, path, retain_s):
                log.info("gc: keeping %s, younger than the retention of %.0f s", name, retain_s)
                continue
            fs.rm(path, recursive=True)
            lapsed = posixpath.join(root, LEASES, name)  # leases that lapsed, if any
            if fs.exists(lapsed):
                fs.rm(lapsed, recursive=True)
            removed.append(name)
        for name in sorted(held):
            log.info("gc: keeping %s, a server holds a lease on it", name)
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
