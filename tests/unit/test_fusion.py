"""Fusion strategies on hand-made rankings."""

from __future__ import annotations

import pytest

from embedlib.search.fusion import FUSIONS, Rankings
from embedlib.search.query import FusionName, SearchOptions

DENSE = [(0.9, 1), (0.5, 2), (0.1, 3)]
LEXICAL = [(4.0, 3), (2.0, 4)]


def fuse(name: FusionName, **options: float) -> list[tuple[float, int]]:
    rankings = Rankings(DENSE, LEXICAL, "cosine", attainable=8.0)
    return FUSIONS[name].fuse(rankings, SearchOptions(fusion=name, **options))


def test_the_registry_holds_every_fusion_a_query_may_name():
    assert set(FUSIONS) == {"relative", "rrf", "minmax"}
    assert all(name == f.name for name, f in FUSIONS.items())


def test_relative_weighs_cosine_and_bm25_over_the_attainable_score():
    got = dict((i, s) for s, i in fuse("relative", alpha=0.5))
    assert got[1] == pytest.approx(0.45)  # dense only
    assert got[3] == pytest.approx(0.5 * 0.1 + 0.5 * 4.0 / 8.0)  # both
    assert got[4] == pytest.approx(0.5 * 2.0 / 8.0)  # lexical only
    assert [i for _, i in fuse("relative", alpha=1.0)][:3] == [1, 2, 3]


def test_rrf_counts_ranks_only():
    got = dict((i, s) for s, i in fuse("rrf", rrf_k=60))
    assert got[3] == pytest.approx(1 / 63 + 1 / 61)
    assert got[1] == pytest.approx(1 / 61)
    assert fuse("rrf")[0][1] == 3  # in both lists


def test_minmax_scales_each_list_and_ties_go_to_the_lower_id():
    got = fuse("minmax", alpha=0.5)
    assert got[0] == (pytest.approx(0.5), 1) and got[1] == (pytest.approx(0.5), 3)
    assert dict((i, s) for s, i in got)[4] == pytest.approx(0.0)
