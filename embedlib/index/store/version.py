"""One index version: its typed manifest, and opening its files.

    versions/v-00002/manifest.json            the `IndexManifest` below
    versions/v-00002/trained.faiss            the trained, empty index
    versions/v-00002/shard-NNNNN.faiss        serving shards
    versions/v-00002/docs-NNNNN.parquet       int64 id -> string id, text, metadata
    versions/v-00002/vectors-NNNNN.npy        the shard's vectors, row-aligned (vectors.py)
    versions/v-00002/lexical-NNNNN.npz        BM25 postings of the shard's text (lexical.py)
    versions/v-00002/lexical-stats.npz        corpus-wide document frequencies

Every reader of an index (the library's `ShardedIndex`, the serving replicas, updates,
retraining) reads the manifest through `IndexManifest` and opens shard files through
`IndexVersion`, so the local cache of remote shards lives in one place.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import faiss
import fsspec
import numpy as np
from fsspec.core import url_to_fs

from embedlib._version import __version__
from embedlib.cache import FileCache
from embedlib.exceptions import SourceError
from embedlib.index.build.plan import IndexPlan
from embedlib.index.faiss_ops import read_index_mmap
from embedlib.index.store.layout import resolve, versions_dir
from embedlib.index.store.vectors import VectorCodec, VectorFile
from embedlib.models.fingerprint import ModelFingerprint
from embedlib.options import Metric
from embedlib.search.lexical import LexicalInfo, LexicalStats, ShardPostings
from embedlib.storage import MANIFEST, file_sha256, is_local, read_json, utc_now, write_json_atomic

INDEX_FORMAT = "embedlib.index"
INDEX_FORMAT_VERSION = 1
TRAINED = "trained.faiss"


def shard_file(shard: int) -> str:
    return f"shard-{shard:05d}.faiss"


def docs_file(shard: int) -> str:
    return f"docs-{shard:05d}.parquet"


@dataclass(frozen=True)
class ShardEntry:
    """One serving shard of a version: its FAISS file and docs table, with checksums."""

    shard: int
    file: str
    count: int
    sha256: str
    docs: str
    docs_sha256: str
    lexical: str | None = None  # the shard's BM25 postings (lexical-NNNNN.npz)
    lexical_sha256: str | None = None
    vectors: str | None = None  # the vector file (None: an index whose docs hold the vectors)
    vectors_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("lexical", "vectors"):
            if out[name] is None:
                del out[name], out[f"{name}_sha256"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardEntry:
        entry = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        for name in (entry.file, entry.docs, entry.lexical, entry.vectors):
            if name is not None:
                check_file_name(name)
        return entry


def check_file_name(name: str) -> None:
    """A file a manifest names must be a plain name inside its version folder: no folder
    part, no `..`, not absolute (a damaged or hostile manifest could reach elsewhere)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"the manifest names the file {name!r}: not a plain file name")


@dataclass(frozen=True)
class SearchParams:
    """Search parameters: FAISS's `nprobe` (IVF) and `ef_search` (HNSW), and `rescore`
    (candidates per result rescored exactly from the vector file; 0: none); None: the
    default (FAISS's own; no rescoring)."""

    nprobe: int | None = None
    ef_search: int | None = None
    rescore: int | None = None

    def override(
        self, *, nprobe: int | None, ef_search: int | None, rescore: int | None = None
    ) -> SearchParams:
        """These parameters with the values given (not None) put in their place."""
        if nprobe is None and ef_search is None and rescore is None:
            return self
        return SearchParams(
            nprobe=self.nprobe if nprobe is None else nprobe,
            ef_search=self.ef_search if ef_search is None else ef_search,
            rescore=self.rescore if rescore is None else rescore,
        )

    def to_dict(self) -> dict[str, int]:
        """As the manifest stores them: {"nprobe": n}, {"efSearch": n} (FAISS's name),
        {"rescore": n}."""
        out = {}
        if self.nprobe is not None:
            out["nprobe"] = self.nprobe
        if self.ef_search is not None:
            out["efSearch"] = self.ef_search
        if self.rescore:
            out["rescore"] = self.rescore
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchParams:
        return cls(nprobe=data.get("nprobe"), ef_search=data.get("efSearch"),
                   rescore=data.get("rescore"))  # fmt: skip


@dataclass(frozen=True)
class Tuning:
    """What the build measured: the tuned parameters' recall and single-query latency."""

    search_params: SearchParams = SearchParams()
    recall_at_10: float | None = None
    target_recall: float | None = None
    latency_ms_p50: float | None = None
    curve: dict[str, Any] | None = None  # queries, k and recall per candidate


@dataclass(frozen=True, kw_only=True)
class IndexManifest:
    """The manifest of an index version (`manifest.json`), typed."""

    factory: str
    plan: IndexPlan
    metric: Metric
    dim: int
    ntotal: int
    shards: tuple[ShardEntry, ...]
    model: ModelFingerprint | None  # None: vectors a user brought
    text_column: str | None
    sources: tuple[dict[str, Any], ...] = ()
    seed: int = 0
    memory_budget: int = 4_000_000_000
    tuning: Tuning = Tuning()
    created_at: str = field(default_factory=utc_now)
    embedlib_version: str = __version__
    updated_from: str | None = None  # the version an update started from
    update: dict[str, int] | None = None  # added / changed / deleted / kept
    chunking: dict[str, Any] | None = None  # rows are chunks of documents (the embed options)
    lexical: LexicalInfo | None = None  # the BM25 part: analysis and corpus-wide counts
    vectors: VectorCodec | None = None  # how the vector files store vectors (None: in docs)
    modality: str = "text"  # what the indexed vectors were made from: "text" or "image"

    @property
    def text_model(self) -> bool:
        """Whether query text can be embedded with the index's model."""
        return self.model is not None and self.model.is_text_model

    @property
    def search_params(self) -> SearchParams:
        return self.tuning.search_params

    def with_shards(self, shards: list[ShardEntry], ntotal: int) -> IndexManifest:
        return replace(self, shards=tuple(shards), ntotal=ntotal, created_at=utc_now())

    def to_dict(self) -> dict[str, Any]:
        t = self.tuning
        out: dict[str, Any] = {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "embedlib_version": self.embedlib_version,
            "created_at": self.created_at,
            "factory": self.factory,
            "plan": self.plan.to_dict(),
            "metric": self.metric,
            "normalized": self.metric == "cosine",
            "dim": self.dim,
            "ntotal": self.ntotal,
            "trained": TRAINED,
            "shards": [s.to_dict() for s in self.shards],
            "model": self.model.to_dict() if self.model else None,
            "text_model": self.text_model,
            "text_column": self.text_column,
            "sources": list(self.sources),
            "seed": self.seed,
            "memory_budget": self.memory_budget,
            "search_params": t.search_params.to_dict(),
            "recall_at_10": t.recall_at_10,
            "target_recall": t.target_recall,
            "latency_ms_p50": t.latency_ms_p50,
            "tuning": t.curve,
        }
        if self.update is not None:
            out.update(updated_from=self.updated_from, update=self.update)
        if self.chunking is not None:
            out["chunking"] = self.chunking
        if self.lexical is not None:
            out["lexical"] = self.lexical.to_dict()
        if self.vectors is not None:
            out["vectors"] = self.vectors.to_dict()
        if self.modality != "text":
            out["modality"] = self.modality
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexManifest:
        if data.get("format", INDEX_FORMAT) != INDEX_FORMAT:
            raise ValueError(f"not an index manifest (format {data.get('format')!r})")
        return cls(
            factory=data["factory"],
            plan=IndexPlan.from_dict(data["plan"]),
            metric=data["metric"],
            dim=int(data["dim"]),
            ntotal=int(data["ntotal"]),
            shards=tuple(ShardEntry.from_dict(s) for s in data["shards"]),
            model=ModelFingerprint.from_dict(data["model"]) if data.get("model") else None,
            text_column=data.get("text_column"),
            sources=tuple(data.get("sources") or ()),
            seed=int(data.get("seed", 0)),
            memory_budget=int(data.get("memory_budget", 4_000_000_000)),
            tuning=Tuning(
                search_params=SearchParams.from_dict(data.get("search_params") or {}),
                recall_at_10=data.get("recall_at_10"),
                target_recall=data.get("target_recall"),
                latency_ms_p50=data.get("latency_ms_p50"),
                curve=data.get("tuning"),
            ),
            created_at=data.get("created_at", ""),
            embedlib_version=data.get("embedlib_version", ""),
            updated_from=data.get("updated_from"),
            update=data.get("update"),
            modality=data.get("modality", "text"),
            chunking=data.get("chunking"),
            lexical=_lexical_info(data.get("lexical")),
            vectors=VectorCodec.from_dict(data["vectors"]) if data.get("vectors") else None,
        )

    @classmethod
    def read(cls, fs: fsspec.AbstractFileSystem, version_path: str) -> IndexManifest:
        return cls.from_dict(read_json(fs, posixpath.join(version_path, MANIFEST)))

    def write(self, fs: fsspec.AbstractFileSystem, version_path: str) -> None:
        write_json_atomic(fs, posixpath.join(version_path, MANIFEST), self.to_dict())


def _lexical_info(data: dict[str, Any] | None) -> LexicalInfo | None:
    if not data:
        return None
    info = LexicalInfo.from_dict(data)
    check_file_name(info.stats)
    return info


class IndexVersion:
    """A published index version, opened for reading: the index root (the version
    CURRENT names, or `version`) or a version folder, on any fsspec URL."""

    def __init__(
        self,
        path: str,
        *,
        version: str | None = None,
        storage_options: dict[str, Any] | None = None,
        cache: FileCache | None = None,
    ) -> None:
        self.fs, root = url_to_fs(path, **(storage_options or {}))
        root = root.rstrip("/")
        self.path = (
            posixpath.join(versions_dir(root), version) if version else resolve(self.fs, root)
        )
        self.manifest = IndexManifest.read(self.fs, self.path)
        self.cache = cache or FileCache()

    @property
    def name(self) -> str:
        """The version's name, e.g. v-00002."""
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def url(self) -> str:
        return str(self.fs.unstrip_protocol(self.path))

    def file(self, name: str) -> str:
        return posixpath.join(self.path, name)

    def local(self, name: str, sha256: str) -> str:
        """A local path of one of the version's files: itself on a local filesystem, else
        its copy in the cache (verified against `sha256` when it enters)."""
        if is_local(self.fs):
            return self.file(name)
        return self.cache.get(self.fs, self.file(name), sha256)

    def open_shard(self, shard: int) -> faiss.Index:
        """A serving shard's index, IVF lists memory-mapped (a remote file is copied to
        the local cache first)."""
        entry = self.manifest.shards[shard]
        return read_index_mmap(self.local(entry.file, entry.sha256))

    def open_vectors(self, shard: int) -> VectorFile | None:
        """A serving shard's vector file (None: an index built before vector files, whose
        docs tables hold the vectors)."""
        entry, codec = self.manifest.shards[shard], self.manifest.vectors
        if entry.vectors is None or codec is None:
            return None
        return VectorFile(self.local(entry.vectors, entry.vectors_sha256 or ""), codec)

    def verify(self) -> None:
        """Check the version can be served before anything switches to it: every file the
        manifest lists has its sha256, every shard opens and answers a probe search, and
        its docs and vector files hold its rows. SourceError naming what is wrong (a
        truncated shard, as a full disk leaves it: FAISS only prints "close error")."""
        m = self.manifest
        names = [(n, h) for s in m.shards for n, h in ((s.file, s.sha256), (s.docs, s.docs_sha256),
                 (s.vectors, s.vectors_sha256), (s.lexical, s.lexical_sha256)) if n]  # fmt: skip
        if m.lexical is not None:
            names.append((m.lexical.stats, m.lexical.stats_sha256))
        for name, sha256 in names:
            if not self.fs.exists(self.file(name)):
                raise SourceError(f"{self.name} cannot be served: {name} is missing")
            if sha256 and file_sha256(self.fs, self.file(name)) != sha256:
                raise SourceError(
                    f"{self.name} cannot be served: {name} does not match its checksum"
                )
        probe = np.zeros((1, m.dim), np.float32)
        probe[0, 0] = 1.0
        for n, entry in enumerate(m.shards):
            try:
                index = self.open_shard(n)
                if index.ntotal != entry.count:
                    raise ValueError(
                        f"it holds {index.ntotal} vectors, the manifest says {entry.count}"
                    )
                index.search(probe, 1)
                vectors = self.open_vectors(n)
                if vectors is not None and len(vectors) != entry.count:
                    raise ValueError(f"its vector file holds {len(vectors)} rows of {entry.count}")
            except (RuntimeError, ValueError, OSError) as e:
                raise SourceError(
                    f"{self.name} cannot be served: shard {n} ({entry.file}): {e}"
                ) from e

    def open_postings(self, shard: int) -> ShardPostings | None:
        """A serving shard's BM25 postings (None: the index has no lexical part)."""
        entry, info = self.manifest.shards[shard], self.manifest.lexical
        if info is None or entry.lexical is None:
            return None
        return ShardPostings(self.local(entry.lexical, entry.lexical_sha256 or ""), info)

    def open_lexical_stats(self) -> LexicalStats | None:
        """The corpus-wide BM25 statistics (None: the index has no lexical part)."""
        info = self.manifest.lexical
        if info is None:
            return None
        return LexicalStats(self.local(info.stats, info.stats_sha256), info)
