"""Filters on Arrow metadata, the automatic index plan, and the writers' lock."""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from embedlib.exceptions import FilterError, IndexLockedError, LockLostError
from embedlib.index.build.plan import TINY, plan_index
from embedlib.index.store.lock import index_lock
from embedlib.search.filters import check_filter, filter_mask

META = pa.table({"lang": ["en", "de", "en", "fr"], "year": pa.array([2020, 2021, 2022, 2021])})


def test_filters_select_rows_by_equality_and_membership():
    assert filter_mask(META, {"lang": "en"}).tolist() == [True, False, True, False]
    assert filter_mask(META, {"lang": "en", "year": {"in": [2022, 1999]}}).tolist() == [
        False, False, True, False
    ]  # fmt: skip
    assert not filter_mask(META, {"colour": "red"}).any()  # a column only other shards have
    with pytest.raises(FilterError, match="do not fit column 'year'"):
        filter_mask(META, {"year": "soon"})
    with pytest.raises(FilterError, match="no such metadata column"):
        check_filter({"colour": "red"}, META.column_names)
    with pytest.raises(FilterError, match="must be a value or"):
        check_filter({"lang": {"in": "en"}}, META.column_names)


def test_the_plan_is_exact_when_small_ivf_when_larger_and_compressed_when_tight():
    assert plan_index(TINY - 1, 64, metric="cosine", memory_budget=10**9).factory == "IDMap2,Flat"
    roomy = plan_index(200_000, 64, metric="cosine", memory_budget=10**10)
    assert roomy.factory.startswith("IVF") and roomy.factory.endswith(",Flat")
    assert roomy.bytes_estimate <= 10**10 and roomy.train_size >= 39 * roomy.nlist
    tight = plan_index(200_000, 64, metric="cosine", memory_budget=200_000 * 40)
    assert not tight.factory.endswith(",Flat") and tight.bytes_estimate <= 200_000 * 40


def test_the_lock_is_exclusive_and_a_stale_one_is_taken_over(tmp_path):
    fs = fsspec.filesystem("file")
    root = str(tmp_path)
    with index_lock(fs, root, what="build") as lease:
        lease.check()
        with pytest.raises(IndexLockedError, match="locked by another build"), index_lock(fs, root):
            pass
        # a holder whose heartbeat is older than stale_after_s loses the lock
        with index_lock(fs, root, stale_after_s=0.0) as taker:
            taker.check()
            with pytest.raises(LockLostError):
                lease.check()
    with index_lock(fs, root):  # released: free again
        pass


@pytest.mark.parametrize("value", [2**64 - 1, 2**64, "soon", 1.5, {"in": [2020, 2**70]}])
def test_a_filter_value_its_column_cannot_hold_is_refused_before_any_search(value):
    """(It answered 500 from inside the search; in grouped placement the error failed the
    other requests of its batch.)"""
    import pyarrow as pa

    from embedlib.exceptions import FilterError
    from embedlib.search.filters import check_filter

    with pytest.raises(FilterError, match="do not fit column 'year' of type int64"):
        check_filter({"year": value}, {"year": pa.int64(), "lang": pa.string()})
    check_filter(
        {"year": {"in": [2020, 2021]}, "lang": "en"}, {"year": pa.int64(), "lang": pa.string()}
    )


def test_a_lost_lease_never_comes_back_and_cannot_act(tmp_path, monkeypatch):
    """A's heartbeat stalls and B takes the lock over. A beat whose check passed before
    the takeover writes only A's own beat file (it used to rewrite the lock with A's
    token: both writers then held it), and A's fenced act is refused."""
    import json
    import time

    import fsspec

    from embedlib.exceptions import LockLostError
    from embedlib.index.store.lock import LOCK, index_lock

    fs = fsspec.filesystem("file")
    root = str(tmp_path)
    with index_lock(fs, root, beat_s=3600, what="update") as a:
        time.sleep(0.6)
        with index_lock(fs, root, stale_after_s=0.5, beat_s=3600, what="build") as b:
            with monkeypatch.context() as m:
                m.setattr(a, "check", lambda: None)  # its check ran before the takeover
                a.beat()
            assert json.loads((tmp_path / LOCK).read_text())["token"] == b.token
            with pytest.raises(LockLostError), a.fenced():
                pytest.fail("a lost lease acted")
            with b.fenced():
                pass
        assert not (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists() and not list(tmp_path.glob(".lock.beat-*"))


def test_tuning_recall_counts_only_the_neighbours_there_are():
    """An index of 7 vectors has 6 neighbours to find, not 10: finding all 6 is recall 1
    (it reported 0.6 and warned that the target was missed)."""
    from embedlib.index.build.tune import _recall

    truth = np.array([[1, 2, 3, 4, 5, 6, -1, -1, -1, -1]])
    found = np.array([[0, 1, 2, 3, 4, 5, 6, -1, -1, -1, -1]])  # the query itself first
    assert _recall(found, truth, np.array([0])) == 1.0
    assert _recall(found[:, :4], truth, np.array([0])) == 0.5
    full = np.arange(1, 11)[None]
    assert _recall(np.arange(0, 11)[None], full, np.array([0])) == 1.0
