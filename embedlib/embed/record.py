"""`_job.json`: what an embed job planned and found before it encoded anything, read
back to resume it (typed like the index manifests: written and read through one class).
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec

from embedlib.models.fingerprint import ModelFingerprint
from embedlib.sets.embedding_set import JOB
from embedlib.storage import read_json, write_json_atomic


@dataclass
class JobRecord:
    """An embed job's record: the scan's findings, the plan and options it ran with, and
    the model's fingerprint once the encoders started (None before)."""

    format: str
    id_column: str | None  # None: ids generated from the file and row
    documents_per_split: list[int]
    rows_per_split: list[int]
    drop_rows: dict[int, list[int]]  # split -> row numbers of later duplicates to drop
    fingerprint: ModelFingerprint | None = None
    source: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    plan_digest: str = ""
    splits: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["drop_rows"] = {str(k): v for k, v in self.drop_rows.items()}  # JSON keys
        out["fingerprint"] = self.fingerprint.to_dict() if self.fingerprint else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in fields}
        known["drop_rows"] = {int(k): list(v) for k, v in data.get("drop_rows", {}).items()}
        fp = data.get("fingerprint")
        known["fingerprint"] = ModelFingerprint.from_dict(fp) if fp else None
        return cls(**known)

    def write(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        """Write it into the embedding set folder `path` (atomically)."""
        write_json_atomic(fs, posixpath.join(path, JOB), self.to_dict())

    @classmethod
    def read(cls, fs: fsspec.AbstractFileSystem, path: str) -> JobRecord:
        return cls.from_dict(read_json(fs, posixpath.join(path, JOB)))
