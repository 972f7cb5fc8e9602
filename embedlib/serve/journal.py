"""The writes a keeper has accepted and not finished, kept under the index root so that a
restarted keeper (Ray restarts it on any node) runs them:

    INDEX/_writes/<keeper>/<write_id>.json   {"record", "documents", "deletes", "text_column"}

(one folder per keeper, named after its application: two servers of one index each run
their own). A file is written (atomically) before the write is acknowledged with 202 and removed once
the write is done or failed. A write that was running when its keeper died runs again:
the update path is idempotent (the same upserts and deletes give the same documents) and
resumes its own interrupted work.
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs

from embedlib.storage import read_json, write_json_atomic

WRITES = "_writes"


@dataclass(frozen=True)
class PendingWrite:
    """A write recorded in the journal: its status record and what it writes."""

    record: dict[str, Any]
    documents: list[dict[str, Any]]
    deletes: list[str]
    text_column: str


class WriteJournal:
    """The pending writes of one index (see the module)."""

    def __init__(
        self, index: str, keeper: str, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.fs, root = url_to_fs(index, **(storage_options or {}))
        self.folder = posixpath.join(root.rstrip("/"), WRITES, keeper)

    def save(self, write: PendingWrite) -> None:
        """Record a write before it is acknowledged (OSError: it could not be recorded)."""
        self.fs.makedirs(self.folder, exist_ok=True)
        write_json_atomic(self.fs, self._path(write.record["write_id"]), {
            "record": write.record, "documents": write.documents, "deletes": write.deletes,
            "text_column": write.text_column,
        })  # fmt: skip

    def remove(self, write_id: str) -> None:
        """Forget a finished write."""
        with contextlib.suppress(FileNotFoundError):  # a resumed write removed it already
            self.fs.rm(self._path(write_id))

    def pending(self) -> list[PendingWrite]:
        """The recorded writes, oldest first."""
        if not self.fs.exists(self.folder):
            return []
        writes = []
        for path in self.fs.ls(self.folder, detail=False):
            name = posixpath.basename(path)
            if name.startswith(".") or not name.endswith(".json"):
                continue  # a save in progress
            data = read_json(self.fs, path)
            writes.append(PendingWrite(data["record"], data["documents"], data["deletes"],
                                       data["text_column"]))  # fmt: skip
        return sorted(writes, key=lambda w: float(w.record["submitted_at"]))

    def _path(self, write_id: str) -> str:
        return posixpath.join(self.folder, f"{write_id}.json")
