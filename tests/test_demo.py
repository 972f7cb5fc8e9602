"""The embedded default corpus and the demo's answers, on the session's Ray cluster."""

from __future__ import annotations

import pytest

from embedlib import RunOptions
from embedlib.cli.demo import run_demo
from embedlib.embed.stdlib_docs import CLASSIC, stdlib_corpus


def test_stdlib_corpus_is_real_and_deterministic():
    a, b = stdlib_corpus(), stdlib_corpus()
    assert a.equals(b)
    ids = a.column("id").to_pylist()
    assert 1000 < len(ids) < 10000 and len(set(ids)) == len(ids)
    assert set(CLASSIC) <= set(ids)
    assert {"gzip.open", "zlib.compress", "bz2.compress", "argparse.ArgumentParser"} <= set(ids)


@pytest.mark.usefixtures("ray_cluster")
def test_demo_answers_the_classic_queries(tmp_path, capsys):
    results = run_demo(str(tmp_path / "demo"), run=RunOptions(progress=False))
    assert results["how to train a neural net"][0][0] == "classic/ml-tutorial"
    assert results["funny animal clip"][0][0] == "classic/cat-video"
    compress = [doc_id.split(".")[0] for doc_id, _ in results["compress a file"]]
    assert {"gzip", "zlib", "bz2"} & set(compress) and len(
        set(compress) & {"gzip", "zlib", "bz2", "lzma", "zipfile"}
    ) >= 3
    out = capsys.readouterr().out
    assert "machine learning tutorial" in out and "published v-00001" in out
    assert (tmp_path / "demo" / "index" / "CURRENT").read_text().strip() == "v-00001"
    # a second run finds every shard committed and embeds nothing
    again = run_demo(str(tmp_path / "demo"), run=RunOptions(progress=False))
    assert again == results
    out = capsys.readouterr().out
    assert "(0 embedded now," in out and "published" not in out  # nothing rebuilt
