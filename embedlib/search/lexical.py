"""The lexical (BM25) part of an index: one postings file per serving shard, and the
corpus-wide statistics that score them.

    versions/v-00002/lexical-NNNNN.npz    a shard's postings: term -> (row, term count)
    versions/v-00002/lexical-stats.npz    every term's document frequency, all shards

Text is analyzed by bm25s's tokenizer (lower case, words of two or more letters or
digits, a language's stop words left out, Snowball stemming by PyStemmer); the shards
keep raw term counts and document lengths, and scores are computed at query time from
corpus-wide statistics (document count, average length, document frequencies) as
Elasticsearch's dfs_query_then_fetch does, so that sharding never changes an answer,
and an update rewrites only the shards it touches plus the statistics. Scoring is
Lucene's BM25, bm25s's default:

    score(d, q) = sum over terms t of q:  idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = log(1 + (N - df + 0.5) / (df + 0.5))
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import Stemmer

LEXICAL_STATS = "lexical-stats.npz"
K1, B = 1.5, 0.75
MAX_QUERY_TERMS = 256  # a longer query is cut to its first 256 terms (after analysis)
# languages with a stop-word list in bm25s; every Snowball stemmer language is accepted
STOPWORD_LANGUAGES = frozenset(
    [
        "english",
        "german",
        "dutch",
        "french",
        "spanish",
        "portuguese",
        "italian",
        "russian",
        "swedish",
        "norwegian",
        "turkish",
        "danish",
    ]
)
RAW = "none"  # no stemming, no stop words: raw lower-cased tokens


def lexical_file(shard: int) -> str:
    return f"lexical-{shard:05d}.npz"


def check_language(language: str) -> None:
    """Refuse a language neither PyStemmer nor the raw analysis knows."""
    if language != RAW and language not in Stemmer.algorithms():
        known = ", ".join(sorted(set(Stemmer.algorithms()) - {"porter", "dutch_porter"}))
        raise ValueError(
            f"lexical language {language!r} is not known; use one of {known}, or {RAW}"
        )


@dataclass(frozen=True)
class Analyzer:
    """How text becomes terms: the same at build and at query time."""

    language: str = "english"

    def __post_init__(self) -> None:
        check_language(self.language)

    def terms(self, texts: Sequence[str]) -> tuple[list[list[int]], list[str]]:
        """Each text's term numbers and the terms they number."""
        import bm25s  # here: bm25s imports numba when it is installed (0.3 s)

        raw = self.language == RAW
        stop: Any = self.language if self.language in STOPWORD_LANGUAGES else []
        tokenized = bm25s.tokenize(
            list(texts),
            stopwords=[] if raw else stop,
            stemmer=None if raw else Stemmer.Stemmer(self.language),
            return_ids=True,
            show_progress=False,
        )
        vocab = [""] * len(tokenized.vocab)
        for term, n in tokenized.vocab.items():
            vocab[n] = term
        return tokenized.ids, vocab

    def query_terms(self, text: str) -> list[str]:
        """The terms of a query, in order, repeats kept, cut at MAX_QUERY_TERMS."""
        ids, vocab = self.terms([text])
        return [vocab[n] for n in ids[0][:MAX_QUERY_TERMS]]


@dataclass(frozen=True)
class LexicalInfo:
    """The lexical part as an index manifest records it."""

    language: str
    documents: int  # rows (chunks) indexed, all shards
    tokens: int  # their total length in terms
    stats: str = LEXICAL_STATS
    stats_sha256: str = ""
    k1: float = K1
    b: float = B

    @property
    def avgdl(self) -> float:
        return self.tokens / self.documents if self.documents else 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LexicalInfo:
        return cls(**data)


@dataclass
class TermCounts:
    """Terms with their document frequencies, over a shard or the whole index."""

    terms: list[str]
    df: np.ndarray  # int64, one per term
    documents: int
    tokens: int

    @classmethod
    def merge(cls, parts: Sequence[TermCounts]) -> TermCounts:
        """The corpus-wide counts of shards' counts (document frequencies add up)."""
        total: dict[str, int] = {}
        for p in parts:
            for term, df in zip(p.terms, p.df.tolist(), strict=True):
                total[term] = total.get(term, 0) + df
        terms = sorted(total)
        return cls(
            terms,
            np.fromiter((total[t] for t in terms), np.int64, len(terms)),
            sum(p.documents for p in parts),
            sum(p.tokens for p in parts),
        )


def _pack_terms(terms: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\n".join(terms).encode(), dtype=np.uint8)


def _unpack_terms(blob: np.ndarray) -> list[str]:
    return blob.tobytes().decode().split("\n") if len(blob) else []


def _save(fs: fsspec.AbstractFileSystem, path: str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    with fs.open(path, "wb") as fh:
        fh.write(buf.getvalue())


def _load(path: str, fs: fsspec.AbstractFileSystem | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file: a local path, or a path on `fs`."""
    if fs is None:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    with fs.open(path, "rb") as fh, np.load(io.BytesIO(fh.read()), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_shard_postings(
    fs: fsspec.AbstractFileSystem, docs_path: str, out_path: str, text_column: str, language: str
) -> TermCounts:
    """Analyze a docs table's texts and write the shard's postings; returns its counts."""
    with fs.open(docs_path, "rb") as fh:
        texts = pq.read_table(fh, columns=[text_column]).column(text_column).to_pylist()
    ids, vocab = Analyzer(language).terms([t or "" for t in texts])
    n = len(texts)
    lengths = np.fromiter((len(x) for x in ids), np.int64, n)
    term = np.fromiter((t for x in ids for t in x), np.int64, int(lengths.sum()))
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keys, tf = np.unique(term * max(n, 1) + row, return_counts=True)  # by term, then row
    term_of, row_of = keys // max(n, 1), keys % max(n, 1)
    df = np.bincount(term_of, minlength=len(vocab)).astype(np.int64)
    _save(
        fs,
        out_path,
        terms=_pack_terms(vocab),
        indptr=np.concatenate([[0], np.cumsum(df)]).astype(np.int64),
        rows=row_of.astype(np.int32),
        tf=tf.astype(np.float32),
        lengths=lengths.astype(np.int32),
    )
    return TermCounts(vocab, df, n, int(lengths.sum()))


def read_shard_counts(fs: fsspec.AbstractFileSystem, path: str) -> TermCounts:
    """A shard's counts, read back from its postings (an update's untouched shards)."""
    data = _load(path, fs)
    return TermCounts(
        _unpack_terms(data["terms"]),
        np.diff(data["indptr"]),
        len(data["lengths"]),
        int(data["lengths"].sum()),
    )


def write_stats(fs: fsspec.AbstractFileSystem, path: str, counts: TermCounts) -> None:
    _save(fs, path, terms=_pack_terms(counts.terms), df=counts.df)


class LexicalStats:
    """Corpus-wide document frequencies: a query's terms weighted by their idf."""

    def __init__(self, local_path: str, info: LexicalInfo) -> None:
        data = _load(local_path)
        self.info = info
        self.analyzer = Analyzer(info.language)
        self.df = dict(zip(_unpack_terms(data["terms"]), data["df"].tolist(), strict=True))

    def weigh(self, text: str) -> tuple[tuple[tuple[str, float], ...], float]:
        """The query's terms found in the index, each with its idf (repeats count), and
        the best score the query could reach: the sum of every term's idf (Lucene's BM25
        of a term tends to its idf as its frequency grows), terms the index lacks at
        document frequency 0."""
        n = self.info.documents
        out = []
        attainable = 0.0
        for term in self.analyzer.query_terms(text):
            df = self.df.get(term, 0)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            attainable += idf
            if df:
                out.append((term, idf))
        return tuple(out), attainable


@dataclass(frozen=True)
class LexicalTask:
    """BM25 searches: each query's weighted terms, with one k and one filter."""

    queries: tuple[tuple[tuple[str, float], ...], ...]
    k: int
    filter: Any = None  # a metadata filter (filters.Filter)


class ShardPostings:
    """One shard's postings, term weights precomputed with the corpus-wide average length."""

    def __init__(self, local_path: str, info: LexicalInfo) -> None:
        data = _load(local_path)
        self.column = {t: n for n, t in enumerate(_unpack_terms(data["terms"]))}
        self.indptr, self.rows = data["indptr"], data["rows"]
        tf, lengths = data["tf"], data["lengths"].astype(np.float32)
        norm = info.k1 * (1 - info.b + info.b * lengths / np.float32(info.avgdl))
        self.weights = (tf / (tf + norm[self.rows])).astype(np.float32)
        self.count = len(lengths)

    def scores(self, terms: Sequence[tuple[str, float]]) -> np.ndarray:
        """BM25 score of every row of the shard (0 where no term matches)."""
        out = np.zeros(self.count, dtype=np.float64)
        for term, idf in terms:
            n = self.column.get(term)
            if n is None:
                continue
            a, b = self.indptr[n], self.indptr[n + 1]
            out[self.rows[a:b]] += idf * self.weights[a:b]
        return out


def top_rows(scores: np.ndarray, allowed: np.ndarray | None, k: int) -> np.ndarray:
    """The rows of the k best positive scores (ties: the lower row first), best first."""
    rows = np.flatnonzero(scores > 0)
    if allowed is not None:
        rows = rows[allowed[rows]]
    if len(rows) > k:
        s = scores[rows]
        cut = s[np.argpartition(-s, k - 1)[:k]].min()
        rows = rows[s >= cut]  # with every row tied at the k-th score
    return rows[np.lexsort((rows, -scores[rows]))][:k]


def merge_lexical(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shards' (scores, ids) merged into the top k: higher score first, then lower id,
    so that any sharding gives the same order; missing results (id -1) last."""
    d = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    out_d = np.full((len(d), k), np.nan, np.float32)
    out_i = np.full((len(d), k), -1, np.int64)
    for q in range(len(d)):
        valid = i[q] >= 0
        dq, iq = d[q][valid], i[q][valid]
        order = np.lexsort((iq, -dq))[:k]
        out_d[q, : len(order)], out_i[q, : len(order)] = dq[order], iq[order]
    return out_d, out_i
