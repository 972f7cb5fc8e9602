"""A lock on an index root, so two updates never interleave.

The lock is a file `INDEX/.lock` created only if absent: `O_CREAT | O_EXCL` on local and
mounted filesystems, fsspec's exclusive create mode ("xb") elsewhere (object stores whose
fsspec driver cannot create exclusively are refused: they would give no guarantee). It
holds who took it and when; a lock older than `stale_after_s` is taken over (its holder
is presumed dead), with a warning. Limits: NFS honours O_EXCL only on NFSv3+; clocks of
the machines sharing the index must roughly agree for the stale timeout.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec

from embedlib.exceptions import EmbedlibError, IndexLockedError
from embedlib.storage import is_local

LOCK = ".lock"
log = logging.getLogger(__name__)


@contextmanager
def index_lock(
    fs: fsspec.AbstractFileSystem,
    root: str,
    *,
    wait_s: float = 0.0,
    stale_after_s: float = 3600.0,
    what: str = "update",
) -> Iterator[str]:
    """Hold the lock of the index at `root` for the block; wait up to `wait_s` for it."""
    path = posixpath.join(root, LOCK)
    token = uuid.uuid4().hex
    body = json.dumps(
        {
            "token": token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "what": what,
            "since": time.time(),
        }
    ).encode()
    deadline = time.monotonic() + wait_s
    while not create_exclusive(fs, path, body):
        holder = _read(fs, path)
        age = time.time() - float(str(holder.get("since", 0)))
        if age > stale_after_s:
            log.warning("taking over a stale index lock (%.0f s old): %s", age, holder)
            fs.rm(path)
            continue
        if time.monotonic() >= deadline:
            raise IndexLockedError(
                f"the index {root!r} is locked by another {holder.get('what', 'update')} "
                f"(host {holder.get('host')}, pid {holder.get('pid')}, {age:.0f} s ago); run "
                f"again when it is done, or pass a wait. A lock older than {stale_after_s:.0f} s "
                f"is taken over; remove {path!r} by hand only if that process is gone."
            )
        time.sleep(0.2)
    try:
        yield token
    finally:
        if _read(fs, path).get("token") == token:
            fs.rm(path)


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, body: bytes) -> bool:
    """Create `path` holding `body` only if it is absent; whether this call created it."""
    if is_local(fs):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:  # its folder does not exist yet
            os.makedirs(os.path.dirname(path), exist_ok=True)
            return create_exclusive(fs, path, body)
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        return True
    try:
        with fs.open(path, "xb") as fh:
            fh.write(body)
    except FileExistsError:
        return False
    except (NotImplementedError, ValueError) as e:
        raise EmbedlibError(
            f"the store of {path!r} cannot create a file only if absent ({e}); updates to an "
            "index there cannot be locked. Update it from one place at a time, on a store "
            "that supports it (local, NFS, s3 with conditional writes)."
        ) from e
    return True


def _read(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, object]:
    """The lock's record; an empty or unreadable one (a crash between create and write)
    reads as taken at time 0, so it is stale and taken over, with a warning."""
    try:
        data = json.loads(fs.cat(path))
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warning("the index lock %r is empty or unreadable: taking it over as stale", path)
        return {"since": 0, "what": "unknown holder"}
    return data if isinstance(data, dict) else {}
