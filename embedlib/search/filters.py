"""Metadata filters: equality and `in` lists on the docs tables' metadata columns.

    {"lang": "en", "year": {"in": [2020, 2021]}}     every condition must hold

The same syntax in the library (`ShardedIndex.search(..., filter=...)`) and over HTTP.
A filter selects rows inside the search (never after it): see `shards.IndexShard`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedlib.exceptions import FilterError

Filter = Mapping[str, Any]


def check_filter(spec: Filter, columns: Collection[str] | Mapping[str, pa.DataType]) -> None:
    """Refuse a filter on a column the index does not have, of a shape not understood, or
    (given the columns' types) with a value its column cannot hold: before any search, so
    the error stays with its own request."""
    for column, cond in spec.items():
        if column not in columns:
            known = ", ".join(sorted(map(repr, columns))) or "none"
            raise FilterError(
                f"cannot filter on {column!r}: the index has no such metadata column (it has {known})"
            )
        values = condition_values(column, cond)
        if isinstance(columns, Mapping):
            _wanted(column, values, columns[column])


def condition_values(column: str, cond: Any) -> list[Any]:
    """The values a condition admits: `cond` itself, or its "in" list; FilterError (a
    ValueError: the contract validates filters with it) for another shape or a value
    that is not a string, number or boolean."""
    if isinstance(cond, dict) and set(cond) == {"in"} and isinstance(cond["in"], list):
        values = list(cond["in"])
    elif isinstance(cond, dict | list):
        raise FilterError(
            f'filter on {column!r} must be a value or {{"in": [values]}}, got {cond!r}'
        )
    else:
        values = [cond]
    for v in values:
        if v is None or isinstance(v, list | dict):
            raise FilterError(
                f"filter on {column!r}: values are strings, numbers or booleans, got {v!r}"
            )
    return values


def filter_mask(table: pa.Table, spec: Filter) -> np.ndarray:
    """Rows of `table` matching every condition of `spec` (checked by `check_filter`
    against the whole index: a column only other shards have matches no row here)."""
    mask = np.ones(table.num_rows, dtype=bool)
    for column, cond in spec.items():
        values = condition_values(column, cond)
        if column not in table.column_names:
            return np.zeros(table.num_rows, dtype=bool)
        col = table.column(column)
        wanted = _wanted(column, values, col.type)
        hit = pc.is_in(col, value_set=wanted).to_numpy(zero_copy_only=False)
        mask &= np.asarray(hit, dtype=bool)
    return mask


def _wanted(column: str, values: list[Any], kind: pa.DataType) -> pa.Array:
    """The filter's values as an array of the column's type; FilterError when one does
    not fit (2**64 in an int64 column, a word in a number column)."""
    try:
        return pa.array(values).cast(kind) if values else pa.array([], kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError) as e:
        shown = ", ".join(map(repr, values[:5]))
        raise FilterError(
            f"filter values {shown} do not fit column {column!r} of type {kind}"
        ) from e
