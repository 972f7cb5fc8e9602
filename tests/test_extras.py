"""The lean core: a use whose extra is missing fails at once with exit status 2 and a
message naming the extra to install (nothing else is lost or left half-written)."""

from __future__ import annotations

import sys

import pytest

from embedlib.cli import main


@pytest.mark.parametrize(
    ("missing", "argv", "extra"),
    [
        ("matplotlib.figure", ["map", "IN", "OUT/map"], "maps"),
        ("umap", ["map", "IN", "OUT/map", "--projection", "umap"], "maps"),
        ("gensim.models", ["train-word2vec", "IN", "OUT/w2v"], "words"),
        ("gensim.models", ["import-vectors", "IN/vectors.txt", "OUT/vectors"], "words"),
        ("implicit.cpu.als", ["recommend", "train", "IN/i.parquet", "OUT/rec"], "recommend"),
        ("datasets", ["finetune", "demo", "OUT/model"], "train"),
    ],
)
def test_a_command_without_its_extra_exits_2_naming_it(
    missing, argv, extra, monkeypatch, tmp_path, capsys
):
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    argv = [
        a.replace("IN", str(tmp_path / "in")).replace("OUT", str(tmp_path / "out")) for a in argv
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"pip install 'embedlib[{extra}]'" in err, err
    assert not (tmp_path / "out").exists()  # failed before writing anything
