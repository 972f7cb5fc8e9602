"""Static word vectors: word2vec / GloVe files and the packaged GloVe 6B 50d as embedding
sets, king - man + woman -> queen through the index, analogy accuracy against exact search."""

from __future__ import annotations

import numpy as np
import pytest
from gensim.models import KeyedVectors
from gensim.test.utils import datapath

from embedlib import EmbeddingSet, RunOptions
from embedlib.exceptions import EmbedlibError, QueryError, SourceError
from embedlib.index import IndexOptions, ShardedIndex, build_index
from embedlib.uses.word_vectors import (
    PACKAGED_GLOVE,
    evaluate_analogies,
    import_word_vectors,
    read_analogies,
)

LOCAL = RunOptions(runner="local", progress=False)


@pytest.mark.parametrize(
    ("name", "fmt", "binary", "no_header"),
    [
        ("toy-model.vec", "word2vec", False, False),
        ("euclidean_vectors.bin", "word2vec-binary", True, False),
        ("test_glove.txt", "glove", False, True),
    ],
)
def test_files_import_as_gensim_reads_them(tmp_path, name, fmt, binary, no_header):
    manifest = import_word_vectors(datapath(name), str(tmp_path / "set"))
    assert manifest.source["format"] == fmt  # detected
    kv = KeyedVectors.load_word2vec_format(datapath(name), binary=binary, no_header=no_header)
    ids, vectors = EmbeddingSet(str(tmp_path / "set")).read_vectors()
    assert ids == list(kv.index_to_key)
    assert np.array_equal(vectors, kv.vectors.astype(np.float32))
    assert EmbeddingSet(str(tmp_path / "set")).fingerprint.precision == "static"


def test_packaged_glove_answers_king_man_woman_and_analogies(tmp_path):
    import_word_vectors(PACKAGED_GLOVE, str(tmp_path / "glove"), limit=100_000)
    build_index(str(tmp_path / "glove"), str(tmp_path / "idx"), run=LOCAL,
                options=IndexOptions(factory="Flat", shards=2))  # fmt: skip
    index = ShardedIndex(str(tmp_path / "idx"))
    hits = index.most_similar(positive=["king", "woman"], negative=["man"], k=3)
    assert hits[0].id == "queen"
    assert {"king", "woman", "man"}.isdisjoint(h.id for h in hits)
    assert index.manifest.text_model is False
    with pytest.raises(QueryError, match="without a text model"):
        index.encode_text(["royalty"])
    questions = read_analogies(datapath("questions-words.txt"))[:700]
    report = evaluate_analogies(questions, str(tmp_path / "idx"))
    index_score, exact_score = report.scores["index"], report.scores["exact"]
    # Flat: the index is exact search, so every answer agrees
    assert index_score.correct == exact_score.correct and index_score.answered > 600
    assert index_score.by_section["capital-common-countries"][0] / 506 > 0.6
    assert "accuracy" in str(report)


def test_bad_inputs_get_clear_errors(tmp_path):
    (tmp_path / "q.txt").write_text(": s\nathens greece baghdad\n")
    with pytest.raises(SourceError, match=r"q.txt:2: an analogy line holds 4 words"):
        read_analogies(str(tmp_path / "q.txt"))
    (tmp_path / "junk.txt").write_text("just some words\nand more words here\n")
    with pytest.raises(SourceError, match="could not be read as glove"):
        import_word_vectors(str(tmp_path / "junk.txt"), str(tmp_path / "set"))
    with pytest.raises(SourceError, match="does not exist"):
        import_word_vectors(str(tmp_path / "missing.vec"), str(tmp_path / "set"))
    import_word_vectors(datapath("toy-model.vec"), str(tmp_path / "set"))
    with pytest.raises(EmbedlibError, match="already holds an embedding set"):
        import_word_vectors(datapath("toy-model.vec"), str(tmp_path / "set"))


def test_cli_import_and_eval(tmp_path, capsys):
    from embedlib.cli import main

    assert main(["import-vectors", datapath("toy-model.vec"), str(tmp_path / "set")]) == 0
    build_index(str(tmp_path / "set"), str(tmp_path / "idx"), run=LOCAL)
    words = EmbeddingSet(str(tmp_path / "set")).read_vectors()[0]
    (tmp_path / "q.txt").write_text(
        f": toy\n{words[0]} {words[1]} {words[2]} {words[3]}\nno such words here\n"
    )
    assert (
        main(["eval", "analogies", str(tmp_path / "q.txt"), "--index", str(tmp_path / "idx")]) == 0
    )
    out = capsys.readouterr().out
    assert "2 questions, 1 answered, 1 skipped" in out and "exact" in out
