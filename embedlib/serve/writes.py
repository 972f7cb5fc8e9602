"""Index writes asked over HTTP (/v1/upsert, /v1/delete), run as Ray work outside the
serving replica: the update embeds the new documents and rewrites the shards it
touches, which is heavier than any search and must not hold a replica's CPU or memory.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray
from ray.exceptions import RayTaskError

from embedlib.distributed import use_worker_env
from embedlib.index.update import UpdateReport, update_index
from embedlib.options import RunOptions
from embedlib.serve.config import AppOptions

WRITE_CPUS = 1.0  # the update task embeds: one CPU of the cluster's


def apply_write(
    options: AppOptions,
    documents: list[dict[str, Any]],
    deletes: list[str],
    text_column: str,
    wait_s: float,
) -> UpdateReport:
    """The update of `options.index`: `documents` (id, text, metadata) upserted and
    `deletes` removed, through the versioned update path (its lock included)."""
    use_worker_env()
    table = (
        pa.Table.from_pylist(
            [{"id": d["id"], text_column: d["text"], **d["metadata"]} for d in documents]
        )
        if documents
        else None
    )
    return update_index(
        options.index, upserts=table, delete_ids=deletes, delta=True, wait_s=wait_s,
        run=RunOptions(runner="local", progress=False, storage_options=options.storage_options),
    )  # fmt: skip


async def submit_write(
    options: AppOptions,
    documents: list[dict[str, Any]],
    deletes: list[str],
    text_column: str,
    wait_s: float,
) -> UpdateReport:
    """Run `apply_write` as a Ray task and wait for it; its errors are raised here."""
    task = ray.remote(apply_write).options(num_cpus=WRITE_CPUS, max_retries=0)
    try:
        report: UpdateReport = await task.remote(options, documents, deletes, text_column, wait_s)
    except RayTaskError as e:
        raise (e.cause if e.cause is not None else e) from None
    return report
