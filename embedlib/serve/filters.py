"""Metadata filters: equality and `in` lists on passthrough columns, evaluated with Arrow."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedlib.exceptions import EmbedlibError


class FilterError(EmbedlibError, ValueError):
    """A filter on a column that does not exist, or of a shape we do not understand."""


def filter_mask(table: pa.Table, spec: dict[str, Any]) -> np.ndarray:
    """Rows of `table` matching every condition of `spec`, e.g.
    {"lang": "en", "year": {"in": [2020, 2021]}}."""
    mask = np.ones(table.num_rows, dtype=bool)
    for column, cond in spec.items():
        if column not in table.column_names:
            raise FilterError(
                f"cannot filter on {column!r}: the index has no such metadata column "
                f"(it has {', '.join(map(repr, table.column_names)) or 'none'})"
            )
        col = table.column(column)
        if isinstance(cond, dict):
            if set(cond) != {"in"} or not isinstance(cond["in"], list):
                raise FilterError(
                    f'filter on {column!r} must be a value or {{"in": [values]}}, got {cond!r}'
                )
            values = cond["in"]
        else:
            values = [cond]
        try:
            wanted = pa.array(values).cast(col.type) if values else pa.array([], col.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise FilterError(
                f"filter values {values!r} do not fit column {column!r} of type {col.type}"
            ) from e
        hit = pc.is_in(col, value_set=wanted).to_numpy(zero_copy_only=False)
        mask &= np.asarray(hit, dtype=bool)
    return mask
