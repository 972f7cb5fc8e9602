"""The lock on an index root that every writer (build publish, update, retrain, gc) holds.

The lock is a file `INDEX/.lock` created only if absent: `O_CREAT | O_EXCL` on local and
mounted filesystems, fsspec's exclusive create mode ("xb", a conditional write on S3)
elsewhere, read back to confirm it holds this writer's token (a driver whose "xb" is not
atomic would let two writers both believe they created it); object stores whose driver
cannot create exclusively are refused. It holds a fencing token (random, one per
holding) and who took it, and is never rewritten: the holder's heartbeat goes to a file
of its own, `.lock.beat-<token>`, every `beat_s` (a holder whose lock was taken over
writes only its own beat file, and never brings its lease back). A lock whose heartbeat is older than
`stale_after_s` is presumed dead and taken over, atomically: the taker first creates
`.lock.takeover-<digest of the stale record>` exclusively, so of two writers that see
the same stale lock only one removes it. An empty or unreadable lock (a crash between
create and write) is stale too, with a warning.

Fencing: a holder whose heartbeat stalled (a paused process, a long GC) may find its
lock taken over. `Lease.fenced()` is the check and the act together: it reads the lock
file, raises `LockLostError` unless it still holds this lease's token, and on a local
filesystem holds an OS lock (`flock` on `.lock.cas`) while the caller acts, which a
takeover takes too, so the lock cannot change hands between the check and the act.
`publish` takes a version name and moves CURRENT inside it, so a holder that lost the
lock cannot publish, even one stalled between its check and its move. Limits: on object
stores the check and the act stay two steps (a conditional write on CURRENT would close
it: not done); NFS honours O_EXCL only on NFSv3+; clocks of the machines sharing an
index must roughly agree (stale means heartbeat older than `stale_after_s` by the
taker's clock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress

import fsspec

from embedlib.exceptions import EmbedlibError, IndexLockedError, LockLostError
from embedlib.storage import is_local

LOCK = ".lock"
BEAT_S = 10.0  # how often a holder rewrites its heartbeat
STALE_AFTER_S = 120.0  # a heartbeat older than this: the holder is presumed dead
log = logging.getLogger(__name__)


class Lease:
    """A held index lock: its fencing token, and the heartbeat that keeps it."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, record: dict[str, object]):
        self.fs, self.path, self.record = fs, path, record
        self.token = str(record["token"])
        self.lost = threading.Event()
        self._stop = threading.Event()

    @property
    def beat_path(self) -> str:
        return f"{self.path}.beat-{self.token}"

    @contextmanager
    def fenced(self) -> Iterator[None]:
        """Check the lease and act in one step: the block runs only while the lock is
        this lease's, and (locally) no takeover can happen until it ends."""
        with _cas(self.fs, self.path):
            self.check()
            yield

    def check(self) -> None:
        """Raise `LockLostError` unless the lock file still holds this lease's token."""
        holder = _read(self.fs, self.path)
        if holder.get("token") != self.token:
            self.lost.set()
            raise LockLostError(
                f"this {self.record.get('what')} lost the lock of {posixpath.dirname(self.path)!r} "
                f"(its heartbeat stalled past the stale timeout and another writer took it over: "
                f"now {holder.get('what', 'nobody')} on host {holder.get('host')}); nothing was "
                "published. Run it again."
            )

    def beat(self) -> None:
        """Write the heartbeat to this lease's own beat file, while the lock is its own
        (a lease found lost stops beating; it never rewrites the lock)."""
        try:
            self.check()
        except LockLostError:
            log.error("the index lock %r was taken over: this writer cannot publish", self.path)
            return
        _write(self.fs, self.beat_path, str(time.time()).encode())

    def _beat_until_stopped(self, every_s: float) -> None:
        while not self._stop.wait(every_s) and not self.lost.is_set():
            try:
                self.beat()
            except OSError as e:  # a storage hiccup: the next beat tries again
                log.warning("could not refresh the index lock %r: %s", self.path, e)


@contextmanager
def index_lock(
    fs: fsspec.AbstractFileSystem,
    root: str,
    *,
    wait_s: float = 0.0,
    stale_after_s: float = STALE_AFTER_S,
    beat_s: float = BEAT_S,
    what: str = "update",
) -> Iterator[Lease]:
    """Hold the lock of the index at `root` for the block (waiting up to `wait_s` for it),
    with a heartbeat every `beat_s`; yields the `Lease` to check before publishing."""
    path = posixpath.join(root, LOCK)
    now = time.time()
    record: dict[str, object] = {"token": uuid.uuid4().hex, "host": socket.gethostname(),
                                 "pid": os.getpid(), "what": what, "since": now, "beat": now}  # fmt: skip
    deadline = time.monotonic() + wait_s
    while not create_exclusive(fs, path, json.dumps(record).encode()):
        raw = _cat(fs, path)
        if raw is None:
            continue  # released meanwhile
        holder = _parse(raw, path)
        age = time.time() - _heartbeat(fs, path, holder)
        if age > stale_after_s:
            _take_over(fs, path, raw, holder, age, stale_after_s)
            continue
        if time.monotonic() >= deadline:
            raise IndexLockedError(
                f"the index {root!r} is locked by another {holder.get('what', 'update')} "
                f"(host {holder.get('host')}, pid {holder.get('pid')}, heartbeat {age:.0f} s "
                "ago); run again when it is done, or pass a wait. A lock whose heartbeat is "
                f"older than {stale_after_s:.0f} s is taken over."
            )
        time.sleep(0.2)
    lease = Lease(fs, path, record)
    if _read(fs, path).get("token") != lease.token:  # "xb" that was not exclusive after all
        raise EmbedlibError(
            f"the store of {path!r} let two writers create the index lock at once; updates "
            "to an index there cannot be locked"
        )
    _write(fs, lease.beat_path, str(now).encode())
    beating = threading.Thread(target=lease._beat_until_stopped, args=(beat_s,), daemon=True)
    beating.start()
    try:
        yield lease
    finally:
        lease._stop.set()
        beating.join()
        with _cas(fs, path):
            if _read(fs, path).get("token") == lease.token:
                fs.rm(path)
        _remove(fs, lease.beat_path)


def _take_over(
    fs: fsspec.AbstractFileSystem,
    path: str,
    raw: bytes,
    holder: dict[str, object],
    age: float,
    stale_after_s: float,
) -> None:
    """Remove the stale lock `raw`, if this caller wins the exclusive takeover record
    (and the lock still holds `raw` then); another taker's win leaves it to them."""
    marker = f"{path}.takeover-{hashlib.sha256(raw).hexdigest()[:16]}"
    if not create_exclusive(fs, marker, b""):
        if _age(fs, marker) > stale_after_s:  # a taker died mid-takeover
            fs.rm(marker)
        time.sleep(0.2)
        return
    try:
        with _cas(fs, path):  # never while a holder is between its check and its act
            if _cat(fs, path) == raw:
                log.warning(
                    "taking over a stale index lock (heartbeat %.0f s old): %s", age, holder
                )
                fs.rm(path)
                _remove(fs, f"{path}.beat-{holder.get('token')}")
    finally:
        fs.rm(marker)


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, body: bytes) -> bool:
    """Create `path` holding `body` only if it is absent; whether this call created it."""
    if is_local(fs):
        # written whole beside it, then hard-linked in place: link() refuses an existing
        # name, and the file is never seen empty (a reader would take it for stale)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(body)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
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


def _cas(fs: fsspec.AbstractFileSystem, path: str) -> AbstractContextManager[None]:
    """An exclusive OS lock beside the index lock (local filesystems), under which a
    fenced act and a takeover exclude each other; object stores have none."""
    return _flocked(f"{path}.cas") if is_local(fs) else nullcontext()


@contextmanager
def _flocked(path: str) -> Iterator[None]:
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _heartbeat(fs: fsspec.AbstractFileSystem, path: str, holder: dict[str, object]) -> float:
    """When the holder last showed it was alive: its beat file's time, else its record's."""
    raw = _cat(fs, f"{path}.beat-{holder.get('token')}")
    if raw is not None:
        try:
            return float(raw)
        except ValueError:
            pass  # half-written: the record's time below
    return float(str(holder.get("beat", holder.get("since", 0))))


def _remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    with suppress(FileNotFoundError):
        fs.rm(path)


def _write(fs: fsspec.AbstractFileSystem, path: str, body: bytes) -> None:
    """Replace the lock's record whole (a reader never sees half of it)."""
    if is_local(fs):
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(body)
        os.replace(tmp, path)
    else:
        fs.pipe(path, body)  # object stores replace an object whole


def _cat(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    try:
        return bytes(fs.cat(path))
    except FileNotFoundError:
        return None


def _age(fs: fsspec.AbstractFileSystem, path: str) -> float:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return 0.0
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created") or time.time()
    return time.time() - (stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp))


def _parse(raw: bytes, path: str) -> dict[str, object]:
    """The lock's record; an empty or unreadable one (a crash between create and write)
    reads as taken at time 0, so it is stale and taken over, with a warning."""
    try:
        data = json.loads(raw)
    except ValueError:
        log.warning("the index lock %r is empty or unreadable: taking it over as stale", path)
        return {"since": 0, "beat": 0, "what": "unknown holder"}
    return data if isinstance(data, dict) else {"since": 0, "beat": 0}


def _read(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, object]:
    raw = _cat(fs, path)
    return {} if raw is None else _parse(raw, path)
