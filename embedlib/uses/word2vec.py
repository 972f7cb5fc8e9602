"""Training static word vectors (gensim Word2Vec, skip-gram or CBOW) on a corpus read the
way `embedlib embed` reads it, written as an embedding set (the word is the id) plus the
gensim model, so `embedlib index` and `embedlib serve` take it unchanged."""

from __future__ import annotations

import os
import posixpath
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from fsspec.core import url_to_fs

from embedlib.embed.corpus import read_corpus
from embedlib.embed.corpus.discover import Format
from embedlib.exceptions import SourceError
from embedlib.extras import optional_import
from embedlib.sets.embedding_set import write_vector_set
from embedlib.storage import MANIFEST, is_local

MODEL_FILE = "word2vec.model"  # gensim's full model: load it to train further


@dataclass
class Word2VecReport:
    output: str
    documents: int
    tokens: int
    vocabulary: int
    dim: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"embedding set: {self.output}\n"
            f"  trained on {self.documents} documents, {self.tokens} tokens in {self.seconds:.1f}s\n"
            f"  vocabulary:  {self.vocabulary} words of dimension {self.dim}\n"
            f"  model:       {posixpath.join(self.output, MODEL_FILE)}"
        )


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation (gensim's simple_preprocess, any length)."""
    utils = optional_import("gensim.utils", "words", what="tokenizing for word2vec")
    return list(utils.simple_preprocess(text, min_len=1, max_len=40))


def train_word2vec(
    source: str,
    out: str,
    *,
    text_column: str = "text",
    format: Format | None = None,
    skip_gram: bool = True,
    dim: int = 100,
    window: int = 5,
    min_count: int = 5,
    epochs: int = 5,
    negative: int = 5,
    seed: int = 0,
    workers: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Word2VecReport:
    """Train Word2Vec on the texts of `source` (file, folder or glob; any fsspec URL; the
    formats `embedlib embed` reads) and write the vectors as an embedding set at `out`.

    The texts are tokenized once into a local file that gensim reads in parallel
    (`corpus_file` mode). With `workers=1` the result is the same for the same seed."""
    models = optional_import("gensim.models", "words", what="embedlib train-word2vec")
    fs_out, out_path = url_to_fs(out, **(storage_options or {}))
    if fs_out.exists(posixpath.join(out_path, MANIFEST)):
        raise SourceError(f"{out!r} already holds an embedding set; train into a new location")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="embedlib-word2vec-") as tmp:
        corpus_file = os.path.join(tmp, "sentences.txt")
        documents, tokens = _write_sentences(
            source, corpus_file, text_column, format, storage_options
        )
        if tokens == 0:
            raise SourceError(f"{source!r} holds no words in column {text_column!r}")
        model = models.Word2Vec(
            sg=int(skip_gram),
            vector_size=dim,
            window=window,
            min_count=min_count,
            epochs=epochs,
            negative=negative,
            seed=seed,
            workers=workers or os.cpu_count() or 1,
        )
        model.build_vocab(corpus_file=corpus_file)
        words = [str(w) for w in model.wv.index_to_key]
        if not words:
            raise SourceError(
                f"no word of {source!r} occurs {min_count} times or more; lower --min-count"
            )
        model.train(
            corpus_file=corpus_file,
            total_examples=model.corpus_count,
            total_words=model.corpus_total_words,
            epochs=model.epochs,
        )
        kind = "skip-gram" if skip_gram else "CBOW"
        write_vector_set(
            out,
            words,
            model.wv.vectors,
            name=f"word2vec {kind} {dim}d on {posixpath.basename(source.rstrip('/'))}",
            metric="cosine",
            source={
                "url": source,
                "kind": "trained word2vec",
                "params": {
                    "skip_gram": skip_gram,
                    "dim": dim,
                    "window": window,
                    "min_count": min_count,
                    "epochs": epochs,
                    "negative": negative,
                    "seed": seed,
                },
            },
            columns={"count": [int(model.wv.get_vecattr(w, "count")) for w in words]},
            storage_options=storage_options,
        )
        local_model = os.path.join(tmp, MODEL_FILE)
        model.save(local_model)
        if is_local(fs_out):
            os.replace(local_model, os.path.join(out_path, MODEL_FILE))
        else:
            fs_out.put_file(local_model, posixpath.join(out_path, MODEL_FILE))
    return Word2VecReport(out, documents, tokens, len(words), dim, time.perf_counter() - start)


def _write_sentences(
    source: str,
    path: str,
    text_column: str,
    format: Format | None,
    storage_options: dict[str, Any] | None,
) -> tuple[int, int]:
    """Tokenize every document of `source` into `path`, one line per document."""
    documents = tokens = 0
    with open(path, "w", encoding="utf-8") as fh:
        for shard, batch in read_corpus(source, text_column=text_column, format=format,
                                        storage_options=storage_options):  # fmt: skip
            if text_column not in batch.table.column_names:
                raise SourceError(
                    f"{shard.file.path!r} has no text column {text_column!r}; its columns "
                    f"are {', '.join(c for c in batch.table.column_names if c != '__row')}. "
                    "Name it with --text-column."
                )
            for text in batch.table.column(text_column).to_pylist():
                words = tokenize(text) if isinstance(text, str) else []
                if words:
                    fh.write(" ".join(words) + "\n")
                    documents += 1
                    tokens += len(words)
    return documents, tokens
