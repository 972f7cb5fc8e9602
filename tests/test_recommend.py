"""Recommendations from interactions generated with planted factors (seeded): the
learned model against popularity and the planted ceiling, the item index against brute
force, and bad inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from embedlib import RunOptions
from embedlib.cli import main
from embedlib.exceptions import RecommendError, SourceError
from embedlib.uses.recommend import (
    Recommender,
    planted_interactions,
    read_interactions,
    recall_at_k,
    split_interactions,
    train_recommender,
)

LOCAL = RunOptions(runner="local", progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    table, users, items = planted_interactions(seed=1)
    pq.write_table(table, root / "interactions.parquet")
    report = train_recommender(
        str(root / "interactions.parquet"), str(root / "rec"), factors=8, seed=1, run=LOCAL
    )
    return root, report, users, items


def test_learned_embeddings_beat_popularity_below_the_planted_ceiling(trained):
    root, report, users, items = trained
    data = read_interactions(str(root / "interactions.parquet"))
    user_ids, u = np.unique(data.users, return_inverse=True)
    item_ids, i = np.unique(data.items, return_inverse=True)
    from scipy.sparse import csr_matrix

    matrix = csr_matrix((data.weights, (u, i)), shape=(len(user_ids), len(item_ids)))
    train, test = split_interactions(matrix, 0.2, 1)  # the split the report used
    true_u = users[[int(x[1:]) for x in user_ids]]
    true_v = items[[int(x[1:]) for x in item_ids]]
    ceiling = recall_at_k(true_u @ true_v.T, train, test, 10)
    assert report.users == 600 and report.items == len(item_ids) and report.test_users == 600
    assert report.recall > 3 * report.popularity_recall
    assert report.recall < ceiling  # the planted factors rank best
    assert report.recall > 0.5 * ceiling


def test_recommendations_equal_brute_force_and_exclude_what_the_user_has(trained):
    root, _, _, _ = trained
    rec = Recommender(str(root / "rec"))
    items = pq.read_table(root / "rec" / "items" / "part-00000.parquet")
    item_ids = items.column("id").to_pylist()
    item_v = np.stack(items.column("vector").to_numpy(zero_copy_only=False))
    for user in ("u0", "u17", "u599"):
        vector, seen = rec.user(user)
        scores = item_v @ vector
        scores[[item_ids.index(s) for s in seen]] = -np.inf
        expected = [item_ids[j] for j in np.argsort(-scores, kind="stable")[:10]]
        answer = rec.recommend(user, k=10)
        assert answer["fallback"] is None
        assert [r["id"] for r in answer["results"]] == expected
        assert not set(seen) & {r["id"] for r in answer["results"]}


def test_an_unknown_user_gets_popular_items_and_is_told(trained):
    root, _, _, _ = trained
    answer = Recommender(str(root / "rec")).recommend("nobody", k=5)
    assert answer["fallback"] == "popular" and "'nobody' has no interactions" in answer["reason"]
    counts = pq.read_table(root / "interactions.parquet").to_pandas()["item"].value_counts()
    assert [r["score"] for r in answer["results"]] == list(counts.values[:5])  # most users
    assert all(counts[r["id"]] == r["score"] for r in answer["results"])
    with pytest.raises(RecommendError, match="between 1 and 400"):
        Recommender(str(root / "rec")).recommend("u0", k=401)


def test_cli_example_data_train_and_query_with_csv(tmp_path, capsys):
    csv = str(tmp_path / "i.csv")
    assert main(["recommend", "example-data", csv, "--users", "100", "--items", "50"]) == 0
    out = str(tmp_path / "rec")
    assert main(["recommend", "train", csv, out, "--factors", "4", "--local", "--no-progress"]) == 0
    assert "recall@10" in capsys.readouterr().out
    assert main(["recommend", "query", out, "--user", "u3", "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["recommend", "query", out, "--user", "stranger", "-k", "3"]) == 0
    assert "most popular" in capsys.readouterr().out


def test_bad_interactions_are_refused_with_what_to_do(tmp_path):
    pcsv.write_csv(pa.table({"customer": ["a", "b"], "item": ["x", "y"]}), tmp_path / "a.csv")
    with pytest.raises(SourceError, match=r"no column 'user'.*'customer'.*--user-column"):
        read_interactions(str(tmp_path / "a.csv"))
    assert len(read_interactions(str(tmp_path / "a.csv"), user_column="customer").users) == 2
    pq.write_table(
        pa.table({"user": ["a", "b"], "item": ["x", "y"], "rating": [1.0, -2.0]}),
        tmp_path / "b.parquet",
    )
    with pytest.raises(SourceError, match="negative"):
        read_interactions(str(tmp_path / "b.parquet"))
    pq.write_table(pa.table({"user": ["a", None], "item": ["x", "y"]}), tmp_path / "c.parquet")
    with pytest.raises(SourceError, match="no 'user'"):
        read_interactions(str(tmp_path / "c.parquet"))
    table, _, _ = planted_interactions(users=20, items=8, per_user=4)
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(RecommendError, match="larger than the item count"):
        train_recommender(str(tmp_path / "d.parquet"), str(tmp_path / "r"), k=9, run=LOCAL)
