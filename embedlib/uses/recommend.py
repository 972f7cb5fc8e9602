"""Recommendations from user/item embeddings learned by matrix factorization.

`train_recommender` reads an interactions table (user, item, and a rating or an implicit
count; Parquet or CSV, any fsspec URL), learns user and item factors with implicit's
alternating least squares (confidence-weighted, the usual model for implicit feedback),
reports recall@k on held-out interactions against the popularity baseline, and writes:

    OUT/recommender.json   settings, counts, the held-out metrics, the most popular items
    OUT/users.parquet      user id, user vector, the items the user already has
    OUT/items/             item vectors as an embedding set (metric "dot")
    OUT/index/             those items indexed for inner-product search

The metric comes from a model trained without the held-out part; the written model is
then trained on every interaction with the same settings. recall@k for one user is
|top k ∩ held out| / min(k, |held out|), averaged over the users with held-out items.

`Recommender` answers "k items for this user" from those files, excluding items the
user already has; a user never seen gets the most popular items, and is told so.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from embedlib.exceptions import EmbedlibError, RecommendError, SourceError
from embedlib.extras import optional_import
from embedlib.index.build.driver import IndexOptions, build_index
from embedlib.options import RunOptions
from embedlib.search.sharded_index import ShardedIndex
from embedlib.sets.embedding_set import write_vector_set
from embedlib.storage import read_json, write_json_atomic

META, USERS, ITEMS, INDEX = "recommender.json", "users.parquet", "items", "index"
WEIGHT_COLUMNS = ("rating", "count", "weight")  # looked for when no weight column is named
POPULAR_KEPT = 1000


@dataclass
class Interactions:
    users: np.ndarray  # (n,) user ids, as strings
    items: np.ndarray  # (n,) item ids, as strings
    weights: np.ndarray  # (n,) float32 > 0; duplicates summed


@dataclass
class RecommenderReport:
    output: str
    users: int
    items: int
    interactions: int
    k: int
    recall: float
    popularity_recall: float
    test_users: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"recommender: {self.output}\n"
            f"  {self.users} users, {self.items} items, {self.interactions} interactions; "
            f"trained in {self.seconds:.1f}s\n"
            f"  held out: recall@{self.k} {self.recall:.3f} vs popularity "
            f"{self.popularity_recall:.3f} ({self.test_users} users)"
        )


def read_interactions(
    source: str,
    *,
    user_column: str = "user",
    item_column: str = "item",
    weight_column: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Interactions:
    """The (user, item, weight) rows of a Parquet or CSV file; without a weight column
    (named, or one of rating/count/weight) every interaction weighs 1."""
    fs, path = url_to_fs(source, **(storage_options or {}))
    if not fs.exists(path):
        raise SourceError(f"{source!r} does not exist")
    with fs.open(path, "rb") as fh:
        if path.endswith((".csv", ".tsv")):
            table = pcsv.read_csv(
                fh,
                parse_options=pcsv.ParseOptions(delimiter="\t" if path.endswith(".tsv") else ","),
                convert_options=pcsv.ConvertOptions(
                    column_types={user_column: pa.string(), item_column: pa.string()}
                ),
            )
        else:
            table = pq.read_table(fh)
    names = table.column_names
    if weight_column is None:
        weight_column = next((c for c in WEIGHT_COLUMNS if c in names), None)
    for column, option in ((user_column, "--user-column"), (item_column, "--item-column"),
                           (weight_column, "--weight-column")):  # fmt: skip
        if column is not None and column not in names:
            raise SourceError(
                f"{source!r} has no column {column!r}; its columns are "
                f"{', '.join(map(repr, names))}. Name the right one with {option}."
            )
    if table.num_rows == 0:
        raise SourceError(f"{source!r} holds no interactions")
    for column in (user_column, item_column):
        nulls = table.column(column).null_count
        if nulls:
            raise SourceError(f"{nulls} rows of {source!r} have no {column!r}; drop or fill them")
    users = np.asarray(pc.cast(table.column(user_column), pa.string()).to_pylist(), dtype=object)
    items = np.asarray(pc.cast(table.column(item_column), pa.string()).to_pylist(), dtype=object)
    if weight_column is None:
        weights = np.ones(len(users), np.float32)
    else:
        col = table.column(weight_column)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise SourceError(
                f"column {weight_column!r} of {source!r} holds {col.type}, not numbers"
            )
        weights = np.asarray(col.to_numpy(zero_copy_only=False), np.float32)
        bad = ~np.isfinite(weights) | (weights < 0)
        if bad.any():
            raise SourceError(
                f"{int(bad.sum())} rows of {source!r} have a missing, negative or infinite "
                f"{weight_column!r}; weights are ratings or counts >= 0"
            )
    keep = weights > 0
    return Interactions(users[keep], items[keep], weights[keep])


def train_recommender(
    source: str,
    out: str,
    *,
    user_column: str = "user",
    item_column: str = "item",
    weight_column: str | None = None,
    factors: int = 32,
    iterations: int = 15,
    regularization: float = 0.05,
    alpha: float = 10.0,
    test_fraction: float = 0.2,
    k: int = 10,
    seed: int = 0,
    build_index_too: bool = True,
    run: RunOptions | None = None,
) -> RecommenderReport:
    """Learn user and item embeddings from the interactions at `source`; write them,
    the held-out metrics and the item index to `out` (a new location)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    for module in ("implicit.cpu.als", "scipy.sparse", "threadpoolctl"):  # fail before any work
        optional_import(module, "recommend", what="embedlib recommend train")
    run = run or RunOptions()
    fs, path = url_to_fs(out, **run.storage_options)
    if fs.exists(posixpath.join(path, META)):
        raise EmbedlibError(f"{out!r} already holds a recommender; train into a new location")
    start = time.perf_counter()
    data = read_interactions(
        source, user_column=user_column, item_column=item_column,
        weight_column=weight_column, storage_options=run.storage_options,
    )  # fmt: skip
    user_ids, u = np.unique(data.users, return_inverse=True)
    item_ids, i = np.unique(data.items, return_inverse=True)
    matrix = _matrix(u, i, data.weights, len(user_ids), len(item_ids))
    if k > len(item_ids):
        raise RecommendError(f"k={k} is larger than the item count ({len(item_ids)})")
    train, test = split_interactions(matrix, test_fraction, seed)
    settings: dict[str, Any] = {"factors": factors, "iterations": iterations, "regularization": regularization,
                "alpha": alpha, "seed": seed}  # fmt: skip
    users_v, items_v = fit_factors(train, **settings)
    popularity = np.asarray((train > 0).sum(axis=0)).ravel()
    recall = recall_at_k(users_v @ items_v.T, train, test, k)
    popular_recall = recall_at_k(np.broadcast_to(popularity, train.shape), train, test, k)
    users_v, items_v = fit_factors(matrix, **settings)  # the model served: every interaction
    counts = np.asarray((matrix > 0).sum(axis=0)).ravel()
    order = np.argsort(-counts, kind="stable")[:POPULAR_KEPT]
    fs.makedirs(path, exist_ok=True)
    write_vector_set(
        posixpath.join(out.rstrip("/"), ITEMS), [str(x) for x in item_ids], items_v,
        name=f"item factors ({factors}) from {posixpath.basename(source)}", metric="dot",
        source={"url": source, "kind": "recommender items"},
        columns={"popularity": counts.tolist()}, storage_options=run.storage_options,
    )  # fmt: skip
    seen = [item_ids[matrix.indices[matrix.indptr[r] : matrix.indptr[r + 1]]].tolist()
            for r in range(len(user_ids))]  # fmt: skip
    users_table = pa.table({
        "user": pa.array([str(x) for x in user_ids], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(users_v.reshape(-1)), factors),
        "seen": pa.array(seen, pa.list_(pa.string())),
    })  # fmt: skip
    with fs.open(posixpath.join(path, USERS), "wb") as fh:
        pq.write_table(users_table, fh)
    report = RecommenderReport(
        out, len(user_ids), len(item_ids), int(matrix.nnz), k, recall, popular_recall,
        int((np.diff(test.indptr) > 0).sum()), 0.0,
    )  # fmt: skip
    if build_index_too:
        build_index(posixpath.join(out.rstrip("/"), ITEMS), posixpath.join(out.rstrip("/"), INDEX),
                    options=IndexOptions(metric="dot", seed=seed), run=run)  # fmt: skip
    report.seconds = time.perf_counter() - start
    write_json_atomic(fs, posixpath.join(path, META), {
        "source": source, "columns": {"user": user_column, "item": item_column,
                                      "weight": weight_column},
        "settings": settings, "test_fraction": test_fraction,
        "counts": {"users": report.users, "items": report.items,
                   "interactions": report.interactions},
        "held_out": {"k": k, "recall": recall, "popularity_recall": popular_recall,
                     "users": report.test_users},
        "popular": [{"id": str(item_ids[j]), "users": int(counts[j])} for j in order],
    })  # fmt: skip
    return report


def _matrix(u: np.ndarray, i: np.ndarray, w: np.ndarray, n_users: int, n_items: int) -> Any:
    sparse = optional_import("scipy.sparse", "recommend", what="embedlib recommend train")
    m = sparse.csr_matrix((w.astype(np.float32), (u, i)), shape=(n_users, n_items))
    m.sum_duplicates()
    return m


def split_interactions(matrix: Any, test_fraction: float, seed: int) -> tuple[Any, Any]:
    """Hold out about `test_fraction` of each user's items (at least one, and never the
    user's last one): (train, test) matrices of the same shape."""
    sparse = optional_import("scipy.sparse", "recommend", what="embedlib recommend train")
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(matrix.nnz, dtype=bool)
    for r in range(matrix.shape[0]):
        lo, hi = matrix.indptr[r], matrix.indptr[r + 1]
        n = hi - lo
        if n < 2:
            continue
        take = min(n - 1, max(1, round(n * test_fraction)))
        test_mask[lo + rng.choice(n, size=take, replace=False)] = True
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))

    def part(mask: np.ndarray) -> Any:
        return sparse.csr_matrix(
            (matrix.data[mask], (rows[mask], matrix.indices[mask])), shape=matrix.shape
        )

    return part(~test_mask), part(test_mask)


def fit_factors(
    matrix: Any, *, factors: int, iterations: int, regularization: float, alpha: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """User and item factors (float32) by implicit's ALS, one BLAS thread (implicit's
    advice: it parallelizes itself)."""
    what = "embedlib recommend train"
    als = optional_import("implicit.cpu.als", "recommend", what=what)
    threadpoolctl = optional_import("threadpoolctl", "recommend", what=what)
    with threadpoolctl.threadpool_limits(1, "blas"):
        model = als.AlternatingLeastSquares(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
            random_state=seed,
        )  # fmt: skip
        model.fit(matrix, show_progress=False)
    return (np.ascontiguousarray(model.user_factors, np.float32),
            np.ascontiguousarray(model.item_factors, np.float32))  # fmt: skip


def recall_at_k(scores: np.ndarray, train: Any, test: Any, k: int) -> float:
    """Mean over users with held-out items of |top k ∩ held out| / min(k, |held out|),
    the user's training items excluded from the ranking."""
    total, users = 0.0, 0
    for r in np.flatnonzero(np.diff(test.indptr) > 0):
        row = np.array(scores[r], dtype=np.float64)
        row[train.indices[train.indptr[r] : train.indptr[r + 1]]] = -np.inf
        top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        held = set(test.indices[test.indptr[r] : test.indptr[r + 1]].tolist())
        total += len(held & set(top.tolist())) / min(k, len(held))
        users += 1
    return total / users if users else 0.0


class Recommender:
    """A trained recommender's users (vectors and items they have) and popular items."""

    def __init__(self, out: str, storage_options: dict[str, Any] | None = None) -> None:
        fs, path = url_to_fs(out, **(storage_options or {}))
        if not fs.exists(posixpath.join(path, META)):
            raise SourceError(f"{out!r} is not a recommender (no {META}); make one with "
                              "`embedlib recommend train`")  # fmt: skip
        self.meta = read_json(fs, posixpath.join(path, META))
        with fs.open(posixpath.join(path, USERS), "rb") as fh:
            users = pq.read_table(fh)
        self.rows = {u: n for n, u in enumerate(users.column("user").to_pylist())}
        flat = users.column("vector").combine_chunks()
        dim = flat.type.list_size
        self.vectors = np.asarray(flat.values.to_numpy(), np.float32).reshape(-1, dim)
        self.seen: list[list[str]] = users.column("seen").to_pylist()
        self.popular = [(p["id"], float(p["users"])) for p in self.meta["popular"]]
        self.items = int(self.meta["counts"]["items"])
        self.index_path = posixpath.join(out.rstrip("/"), INDEX)

    def check_k(self, k: int) -> None:
        if k < 1 or k > self.items:
            raise RecommendError(
                f"k={k}: ask for between 1 and {self.items} items (the item count)"
            )

    def user(self, user: str) -> tuple[np.ndarray, list[str]] | None:
        """The user's vector and the items they have; None for a user never seen."""
        row = self.rows.get(user)
        return None if row is None else (self.vectors[row], self.seen[row])

    def popular_answer(self, user: str, k: int) -> dict[str, Any]:
        """The answer for a user never seen: the `k` most popular items, said so."""
        return {
            "user": user,
            "results": [{"id": i, "score": s} for i, s in self.popular[:k]],
            "fallback": "popular",
            "reason": f"user {user!r} has no interactions in the training data: the most "
            "popular items",
        }

    def recommend(self, user: str, k: int = 10, index: Any = None) -> dict[str, Any]:
        """Top-k items for `user` from the item index (a `ShardedIndex`, opened here when
        not given), items the user has excluded; popular items for an unknown user."""
        self.check_k(k)
        found = self.user(user)
        if found is None:
            return self.popular_answer(user, k)
        index = index or ShardedIndex(self.index_path)
        vector, seen = found
        hits = index.search(vector[None, :], k, include=(), exclude=seen)[0]
        return {"user": user, "results": [{"id": h.id, "score": h.score} for h in hits],
                "fallback": None}  # fmt: skip


def planted_interactions(
    users: int = 600, items: int = 400, factors: int = 8, per_user: int = 30, seed: int = 0
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Synthetic interactions from planted factors, for tests and examples (no real
    interactions data ships offline): each user picks `per_user` distinct items with
    probability softmax(u . v), with an implicit count of 1-5. Returns the table (user,
    item, count) and the true user and item factors, whose ranking is the ceiling any
    learned model can reach."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(users, factors)).astype(np.float32)
    v = rng.normal(size=(items, factors)).astype(np.float32)
    rows_u, rows_i = [], []
    for r in range(users):
        logits = u[r] @ v.T
        p = np.exp(logits - logits.max())
        picks = rng.choice(items, size=per_user, replace=False, p=p / p.sum())
        rows_u += [f"u{r}"] * per_user
        rows_i += [f"i{j}" for j in picks]
    counts = rng.integers(1, 6, size=len(rows_u))
    return pa.table({"user": rows_u, "item": rows_i, "count": counts}), u, v
