"""Training word2vec on a corpus read like `embedlib embed` reads it; the embedding set
and its index answer like gensim's own model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gensim.test.utils import datapath

from embedlib import EmbeddingSet, RunOptions
from embedlib.cli import main
from embedlib.exceptions import EmbedlibError, SourceError
from embedlib.index import ShardedIndex, build_index
from embedlib.uses.word2vec import MODEL_FILE, train_word2vec

LOCAL = RunOptions(runner="local", progress=False)


@pytest.fixture(scope="module")
def lee(tmp_path_factory):
    """gensim's Lee background corpus (300 news articles), trained with one thread."""
    out = tmp_path_factory.mktemp("w2v") / "lee"
    report = train_word2vec(
        datapath("lee_background.cor"), str(out), format="text", dim=50, min_count=2,
        epochs=10, workers=1, seed=3,
    )  # fmt: skip
    return out, report


def test_the_set_holds_the_models_vectors_and_its_index_answers_like_gensim(lee, tmp_path):
    from gensim.models import Word2Vec

    out, report = lee
    model = Word2Vec.load(str(out / MODEL_FILE))
    assert report.documents == 300 and report.vocabulary == len(model.wv) > 3000
    ids, vectors = EmbeddingSet(str(out)).read_vectors()
    assert ids == list(model.wv.index_to_key)
    assert np.array_equal(vectors, model.wv.vectors)
    assert EmbeddingSet(str(out)).fingerprint.precision == "static"
    build_index(str(out), str(tmp_path / "idx"), run=LOCAL)
    index = ShardedIndex(str(tmp_path / "idx"))
    for word in ("fire", "government", "police"):
        ours = [h.id for h in index.most_similar(positive=[word], k=5)]
        theirs = [w for w, _ in model.wv.most_similar(word, topn=5)]
        assert ours == theirs


def test_cli_trains_skip_gram_or_cbow_from_a_text_column(tmp_path, capsys):
    lines = Path(datapath("lee_background.cor")).read_text(encoding="utf-8").splitlines()
    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"id": n, "body": t}) + "\n" for n, t in enumerate(lines))
    )
    argv = ["train-word2vec", str(tmp_path / "c.jsonl"), str(tmp_path / "cbow"), "--cbow",
            "--text-column", "body", "--dim", "20", "--min-count", "3", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "vocabulary" in capsys.readouterr().out
    manifest = EmbeddingSet(str(tmp_path / "cbow")).manifest
    assert manifest.dim == 20 and manifest.source["params"]["skip_gram"] is False


def test_bad_inputs_are_refused_with_what_to_do(lee, tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": 1, "body": "a b c"}) + "\n")
    with pytest.raises(SourceError, match=r"no text column 'text'.*body.*--text-column"):
        train_word2vec(str(tmp_path / "c.jsonl"), str(tmp_path / "o1"))
    with pytest.raises(SourceError, match="lower --min-count"):
        train_word2vec(str(tmp_path / "c.jsonl"), str(tmp_path / "o2"), text_column="body")
    with pytest.raises(EmbedlibError, match="already holds"):
        train_word2vec(datapath("lee_background.cor"), str(lee[0]), format="text")
