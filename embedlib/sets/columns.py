"""Arrow helpers: vector columns to and from NumPy, and tables brought to one schema."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from embedlib.exceptions import SourceError


def vector_array(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """An (n, d) matrix as an Arrow fixed_size_list<float32|float16>[d] array."""
    flat = np.ascontiguousarray(vectors, dtype=np.float16 if dtype == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), vectors.shape[1])


def vectors_of(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_list vector column as a float32 (n, d) matrix (float16 is widened)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, dim)


def unify_schemas(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """One schema for all; a field whose types cannot be promoted becomes a string."""
    try:
        return pa.unify_schemas(list(schemas), promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        fields: dict[str, pa.Field] = {}
        for schema in schemas:
            for f in schema:
                if f.name not in fields:
                    fields[f.name] = f
                    continue
                try:
                    fields[f.name] = pa.unify_schemas(
                        [pa.schema([fields[f.name]]), pa.schema([f])], promote_options="permissive"
                    ).field(0)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    fields[f.name] = pa.field(f.name, pa.string())
        return pa.schema(list(fields.values()))


def conform_table(
    table: pa.Table, schema: pa.Schema, *, text_fallback: bool = False
) -> pa.Table | None:
    """`table` with `schema`'s columns and types, or None when it cannot be made to fit."""
    if not set(table.column_names) <= set(schema.names):
        return None
    arrays = []
    for f in schema:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if col.type == f.type:
            arrays.append(col)
            continue
        try:
            arrays.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            if not (text_fallback and pa.types.is_string(f.type)):
                return None
            arrays.append(pa.array([_text(v) for v in col.to_pylist()], pa.string()))
    return pa.Table.from_arrays(arrays, schema=schema)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def fitted_schema(schema: pa.Schema, rows: pa.Table) -> pa.Schema:
    """The docs schema that takes `rows`: each column keeps the type the index gave it
    (a value that does not fit it exactly is refused, naming the column and the value:
    1.5 in an integer column, 2**63 in int64, a string in a number column, an integer
    that float64 would round); a new metadata column is appended."""
    for name in rows.column_names:
        if name not in schema.names:
            continue
        column, want = rows.column(name), schema.field(name).type
        if column.type == want or pa.types.is_null(column.type):
            continue
        try:
            column.cast(want, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            bad = next((v for v in column.to_pylist() if not _fits(v, want)), column.type)
            raise SourceError(
                f"metadata {name!r}: the value {bad!r} does not fit the index's {want} column "
                "exactly; send a value of that type (an index keeps one type per column)"
            ) from None
    extra = [rows.schema.field(n) for n in rows.column_names if n not in schema.names]
    return pa.schema([*schema, *extra])


def _fits(value: Any, want: pa.DataType) -> bool:
    try:
        pa.array([value]).cast(want, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
        return False
    return True
