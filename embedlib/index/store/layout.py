"""An index root on storage: versions side by side and a `CURRENT` pointer.

    INDEX/CURRENT                       the name of the published version, e.g. v-00002
    INDEX/versions/v-00002/manifest.json
    INDEX/versions/v-00002/trained.faiss      the trained, empty index
    INDEX/versions/v-00002/shard-NNNNN.faiss  serving shards
    INDEX/versions/v-00002/docs-NNNNN.parquet int64 id -> string id, text, metadata
    INDEX/versions/v-00002/vectors-NNNNN.npy  the shard's vectors, in its docs' row order
    INDEX/versions/.staging-<uuid>/     a version being built (never read)
    INDEX/_leases/, INDEX/_writes/      servers' leases (leases.py), pending writes (journal.py)

A version is written in a staging folder, moved to its name, and only then published
by rewriting CURRENT (locally: written beside, then renamed; on S3: one conditional
PUT, If-Match the CURRENT this writer found): a reader never sees half an index, and a
writer that lost its lock cannot move CURRENT over the one that took it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import uuid
from contextlib import nullcontext
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from embedlib.exceptions import LockLostError, SourceError
from embedlib.index.store.lock import Lease, create_exclusive
from embedlib.storage import MANIFEST, is_local

CURRENT = "CURRENT"
VERSIONS = "versions"
_VERSION = re.compile(r"^v-(\d{5,})$")
RESERVED = ".reserved"  # object stores: a version name taken, its files being copied


def versions_dir(root: str) -> str:
    return posixpath.join(root, VERSIONS)


def list_versions(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    folder = versions_dir(root)
    if not fs.exists(folder):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    return sorted((n for n in names if _VERSION.match(n)), key=lambda n: int(n[2:]))


def next_version(fs: fsspec.AbstractFileSystem, root: str) -> str:
    existing = list_versions(fs, root)
    last = int(existing[-1][2:]) if existing else 0
    return f"v-{last + 1:05d}"


def staging_path(root: str) -> str:
    return posixpath.join(versions_dir(root), f".staging-{uuid.uuid4().hex}")


def current_version(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """The published version's name; SourceError when the root has none."""
    pointer = posixpath.join(root, CURRENT)
    if not fs.exists(pointer):
        raise SourceError(
            f"{root!r} holds no published index (no {CURRENT} file); build one with `embedlib index`"
        )
    name = fs.cat(pointer).decode().strip()
    if not _VERSION.match(name):
        raise SourceError(f"{pointer!r} names {name!r}, which is not an index version")
    return name


def resolve(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The version folder for an index root (via CURRENT) or a version folder itself."""
    if fs.exists(posixpath.join(path, MANIFEST)):
        return path
    return posixpath.join(versions_dir(path), current_version(fs, path))


def published_version(index: str, storage_options: dict[str, Any] | None = None) -> str:
    """The name of the version an index path (root or version folder) resolves to now."""
    fs, root = url_to_fs(index, **(storage_options or {}))
    return posixpath.basename(resolve(fs, root.rstrip("/")).rstrip("/"))


def has_version(index: str, name: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether the index root holds a complete version of that name."""
    fs, root = url_to_fs(index, **(storage_options or {}))
    return bool(_VERSION.match(name)) and fs.exists(
        posixpath.join(versions_dir(root.rstrip("/")), name, MANIFEST)
    )


def publish(
    fs: fsspec.AbstractFileSystem, root: str, staging: str, lease: Lease | None = None
) -> str:
    """Move a finished staging folder to a new version name and point CURRENT at it. The
    name is taken atomically (a rename that fails onto an existing version, or an
    exclusively created marker on object stores), so two publishers never share one;
    on object stores the manifest is copied last, so a version is complete once it has
    one. With the writer's `lease`, the lock is checked (fencing) before the name is
    taken and before CURRENT moves: a writer that lost the lock publishes nothing."""
    fenced = lease.fenced if lease is not None else nullcontext
    current = posixpath.join(root, CURRENT)
    if conditional_puts(fs):
        with fenced():  # CURRENT as this writer found it, while the lock was its own
            expected = _etag(fs, current)
    while True:
        name = next_version(fs, root)
        target = posixpath.join(versions_dir(root), name)
        if is_local(fs):
            try:
                with fenced():  # the lease checked and the name taken in one step
                    os.rename(staging, target)  # atomic; refused onto a version that exists
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue  # another publisher took this name first
                raise
            break
        marker = posixpath.join(target, RESERVED)
        with fenced():
            taken = create_exclusive(fs, marker, b"")
        if not taken:
            continue
        files = sorted(fs.find(staging), key=lambda p: p.endswith("/" + MANIFEST))
        for path in files:  # the manifest last
            fs.copy(path, posixpath.join(target, posixpath.relpath(path, staging)))
        fs.rm(marker)
        fs.rm(staging, recursive=True)
        break
    # a lost lease leaves the version (complete, unpublished) for gc to remove
    if conditional_puts(fs):
        with fenced():
            _put_if_unchanged(fs, current, f"{name}\n".encode(), expected, name)
        return name
    tmp = posixpath.join(root, f".{CURRENT}.{uuid.uuid4().hex}.tmp")
    fs.pipe(tmp, f"{name}\n".encode())
    with fenced():
        fs.mv(tmp, current)
    return name


def conditional_puts(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether CURRENT is moved with a conditional write (S3's If-Match / If-None-Match):
    a writer stalled between its lease check and its write cannot move CURRENT over the
    version of the writer that took over. Local filesystems check and move under an OS
    lock instead; other object stores only check the lease just before."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool({"s3", "s3a"} & set(protocols))


def _etag(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The object's ETag now (None: there is none)."""
    fs.invalidate_cache(path)
    try:
        return str(fs.info(path)["ETag"])
    except FileNotFoundError:
        return None


def _put_if_unchanged(
    fs: fsspec.AbstractFileSystem, path: str, body: bytes, etag: str | None, name: str
) -> None:
    """Write CURRENT only if it is still the object whose ETag was read (absent: only
    if still absent); LockLostError when another writer moved it meanwhile."""
    try:
        if etag is None:
            fs.pipe_file(path, body, mode="create")
        else:
            fs.pipe_file(path, body, IfMatch=etag)
    except (FileExistsError, OSError) as e:
        precondition = isinstance(e, FileExistsError) or e.errno == errno.EINVAL
        if not precondition:
            raise
        raise LockLostError(
            f"{path!r} changed while this writer published {name} (another writer took its "
            f"lock over and published first): {name} is left unpublished for gc to remove. "
            "Run the update again."
        ) from e
