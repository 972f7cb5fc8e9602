"""Where embedlib keeps files it can make again (converted models, copies of remote index
files): a private per-user folder, `$EMBEDLIB_CACHE` or ~/.cache/embedlib, mode 0700.

`FileCache` holds local copies of remote index files by content: a file enters only once
its bytes match the sha256 its manifest lists, versions that share a file share one copy
(an update copies the shards it leaves alone), and the least recently used files go once
the cache is over its size budget (`EMBEDLIB_CACHE_MAX_GB`, default 20). A file evicted
while memory-mapped stays readable to whoever mapped it (POSIX keeps its pages); a file
used in the last minute is not evicted, so a path just handed out can still be opened
(the budget may be overrun for that minute).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import time
from pathlib import Path

import fsspec

from embedlib.exceptions import StorageError

log = logging.getLogger(__name__)
DEFAULT_BUDGET_GB = 20.0
CHUNK = 1 << 22
# a file used this recently is never evicted: another process sharing the folder (a
# replica on the same node) may have just been handed its path and not opened it yet
EVICT_GRACE_S = 60.0
INCOMING_STALE_S = 3600.0  # a partial copy this old was left by a process that died
_SHA256 = re.compile(r"[0-9a-f]{64}")


def cache_root() -> Path:
    """$EMBEDLIB_CACHE, else ~/.cache/embedlib."""
    return Path(os.environ.get("EMBEDLIB_CACHE") or Path.home() / ".cache" / "embedlib")


def private_dir(path: Path) -> Path:
    """`path` created (with its parents) and made private to this user (0700); a folder
    another user owns is refused (its files could be swapped under us)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise StorageError(
            f"the cache folder {str(path)!r} belongs to another user; set EMBEDLIB_CACHE to a "
            "folder of your own"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def cache_budget_bytes() -> int:
    """$EMBEDLIB_CACHE_MAX_GB (default 20) in bytes."""
    raw = os.environ.get("EMBEDLIB_CACHE_MAX_GB", str(DEFAULT_BUDGET_GB))
    try:
        gb = float(raw)
    except ValueError:
        raise StorageError(f"EMBEDLIB_CACHE_MAX_GB must be a number of GB, got {raw!r}") from None
    if gb <= 0:
        raise StorageError(f"EMBEDLIB_CACHE_MAX_GB must be > 0, got {raw!r}")
    return int(gb * 1e9)


class FileCache:
    """Verified local copies of remote files, by sha256 (see the module)."""

    def __init__(
        self,
        folder: Path | None = None,
        budget_bytes: int | None = None,
        grace_s: float = EVICT_GRACE_S,
    ) -> None:
        self.folder = folder or cache_root() / "index"
        self.budget_bytes = cache_budget_bytes() if budget_bytes is None else budget_bytes
        self.grace_s = grace_s

    def get(self, fs: fsspec.AbstractFileSystem, path: str, sha256: str) -> str:
        """A local copy of `path` whose content has that sha256 (copied and verified on a
        miss); StorageError if the file's bytes do not match its checksum."""
        if not _SHA256.fullmatch(sha256 or ""):
            raise StorageError(
                f"the manifest lists {sha256!r} as the sha256 of {fs.unstrip_protocol(path)!r}: "
                "not 64 hex digits; the manifest is damaged"
            )
        folder = private_dir(self.folder)
        name = Path(path).name
        target = folder / f"{sha256}-{name}"
        if target.exists():
            os.utime(target)  # recently used
            return str(target)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-")  # mode 0600
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, fs.open(path, "rb") as src:
                while block := src.read(CHUNK):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != sha256:
                raise StorageError(
                    f"{fs.unstrip_protocol(path)!r} does not match the checksum its manifest "
                    f"lists (sha256 {digest.hexdigest()[:16]}..., expected {sha256[:16]}...): the "
                    "file was changed or damaged after it was written. Rebuild or restore that "
                    "version; it was not used."
                )
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.evict(keep=target)
        return str(target)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used files until the cache fits its budget (never
        `keep` nor a file used in the last `grace_s` seconds); the files removed."""
        recent = time.time() - self.grace_s
        files = []
        for entry in os.scandir(self.folder):
            if entry.is_file() and entry.name.startswith(".incoming-"):
                # a copy a killed process left: removed once no copy could still be running
                if entry.stat().st_mtime < time.time() - INCOMING_STALE_S:
                    Path(entry.path).unlink(missing_ok=True)
            elif entry.is_file():
                info = entry.stat()
                files.append((info.st_mtime, info.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in files)
        removed = []
        for mtime, size, path in sorted(files):
            if total <= self.budget_bytes:
                break
            if path == keep or mtime > recent:
                continue
            path.unlink(missing_ok=True)
            total -= size
            removed.append(path)
        if removed:
            log.info("cache: evicted %d least recently used files", len(removed))
        return removed
