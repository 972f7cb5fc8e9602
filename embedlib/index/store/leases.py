"""Leases on index versions: who is reading a version now, so that gc never deletes it.

    INDEX/_leases/v-00002/<holder>.json   {"holder", "host", "pid", "expires_at"}

A serving replica takes a lease on each version it serves and renews it every
LEASE_RENEW_S (the lease lasts LEASE_TTL_S); it drops it when it lets the version go.
A holder that dies stops renewing, and its lease lapses. `gc` skips every version with a
lease that has not lapsed (`held_versions`), as Delta Lake's VACUUM keeps the files
readers may still use.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

log = logging.getLogger(__name__)
LEASES = "_leases"
LEASE_TTL_S = 300.0
LEASE_RENEW_S = 60.0


def lease_path(root: str, version: str, holder: str) -> str:
    return posixpath.join(root, LEASES, version, f"{holder}.json")


def take_lease(fs: fsspec.AbstractFileSystem, root: str, version: str, holder: str,
               ttl_s: float = LEASE_TTL_S) -> None:  # fmt: skip
    """Write (or renew) `holder`'s lease on `version`, lasting `ttl_s` from now."""
    record = {"holder": holder, "host": socket.gethostname(), "pid": os.getpid(),
              "expires_at": time.time() + ttl_s}  # fmt: skip
    path = lease_path(root, version, holder)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe(path, json.dumps(record).encode())


def release_lease(fs: fsspec.AbstractFileSystem, root: str, version: str, holder: str) -> None:
    path = lease_path(root, version, holder)
    if fs.exists(path):
        fs.rm(path)


def held_versions(fs: fsspec.AbstractFileSystem, root: str, now: float | None = None) -> set[str]:
    """The versions with at least one lease that has not lapsed. A lease file that
    cannot be read counts as held (gc keeps what it cannot rule out)."""
    now = time.time() if now is None else now
    folder = posixpath.join(root, LEASES)
    if not fs.exists(folder):
        return set()
    held = set()
    for version_dir in fs.ls(folder, detail=False):
        version = posixpath.basename(version_dir.rstrip("/"))
        for path in fs.ls(version_dir, detail=False) if fs.isdir(version_dir) else []:
            try:
                expires = float(json.loads(fs.cat(path))["expires_at"])
            except (OSError, ValueError, KeyError, TypeError):
                held.add(version)
                continue
            if expires > now:
                held.add(version)
    return held


class LeaseRenewer:
    """A daemon thread renewing one holder's leases on the versions it serves, every
    LEASE_RENEW_S; a renewal that fails is logged and tried again next round (the lease
    lasts LEASE_TTL_S, five rounds)."""

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.storage_options = storage_options or {}
        self._held: dict[tuple[str, str], fsspec.AbstractFileSystem] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
        self._thread.start()

    def hold(self, index_root: str, version: str) -> None:
        """Take a lease on `version` of the index at `index_root` (a URL) now."""
        fs, root = url_to_fs(index_root, **self.storage_options)
        root = root.rstrip("/")
        take_lease(fs, root, version, self.holder)
        with self._lock:
            self._held[(root, version)] = fs

    def release(self, index_root: str, version: str) -> None:
        fs, root = url_to_fs(index_root, **self.storage_options)
        root = root.rstrip("/")
        with self._lock:
            self._held.pop((root, version), None)
        release_lease(fs, root, version, self.holder)

    def stop(self) -> None:
        """Stop renewing and drop every lease held."""
        self._stop.set()
        with self._lock:
            held, self._held = dict(self._held), {}
        for (root, version), fs in held.items():
            try:
                release_lease(fs, root, version, self.holder)
            except OSError as e:  # it lapses by itself
                log.warning("could not drop the lease on %s/%s: %s", root, version, e)

    def _run(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            with self._lock:
                held = dict(self._held)
            for (root, version), fs in held.items():
                try:
                    take_lease(fs, root, version, self.holder)
                except OSError as e:
                    log.warning("could not renew the lease on %s/%s: %s", root, version, e)
