"""Index build, phase 3: add tasks. Each copies the trained empty index and adds one
unit of rows (a row range of the inputs cut at serving-shard boundaries) with global
int64 ids, writes the partial index, the unit's docs rows and its vector file, and finds the exact top-k
of the tuning queries among its rows (the ground truth, without a second pass)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedlib.distributed import current_node
from embedlib.embed.documents import CHUNK, ID, id_hashes
from embedlib.exceptions import VectorError
from embedlib.index.build.plan import faiss_metric
from embedlib.index.build.staging import K_TUNE, BuildContext, docs_row_group
from embedlib.index.faiss_ops import (
    merge_topk,
    prepare_vectors,
    read_index_file,
    use_task_cpus,
    write_index,
)
from embedlib.index.store.docs import IID
from embedlib.index.store.vectors import VectorFileWriter
from embedlib.sets.columns import conform_table
from embedlib.sets.sources import RowRange, VectorSource, read_range


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of a span (positions within the span), all in one serving shard."""

    index: int
    shard: int
    span: RowRange
    start: int
    stop: int

    @property
    def first_id(self) -> int:
        return self.span.offset + self.start


@dataclass
class PartialResult:
    """What an add task reports: its partial files' name and rows, the exact top-k of
    the tuning queries among its rows, and the 64-bit hashes of its ids."""

    shard: int
    name: str
    rows: int
    gt_scores: np.ndarray
    gt_ids: np.ndarray
    id_hashes: np.ndarray
    node: str


def plan_units(src: VectorSource, shards: int) -> list[Unit]:
    """The inputs' row ranges cut where the serving shards' balanced id ranges begin."""
    n = src.count
    bounds = [round(s * n / shards) for s in range(shards + 1)]
    units: list[Unit] = []
    for span in src.ranges:
        a = span.offset
        b = span.offset + span.rows
        for s in range(shards):
            lo, hi = max(a, bounds[s]), min(b, bounds[s + 1])
            if lo < hi:
                units.append(Unit(len(units), s, span, lo - a, hi - a))
    return units


def add_units(units: list[Unit], ctx: BuildContext, name: str) -> PartialResult:
    """Task: copy the trained index, add the units' vectors with global ids, write the
    partial index, its docs rows and vector file, and find the queries' exact top-k among them."""
    use_task_cpus()
    index = read_index_file(ctx.fs, ctx.trained)
    k = K_TUNE + 1
    best_d = np.full((len(ctx.queries), 0), np.nan, np.float32)
    best_i = np.zeros((len(ctx.queries), 0), np.int64)
    hashes = []
    docs_path = ctx.partial(name, "parquet")
    writer: pq.ParquetWriter | None = None
    rows = 0
    total = sum(u.stop - u.start for u in units)
    with ctx.fs.open(docs_path, "wb") as out, ctx.fs.open(ctx.partial(name, "npy"), "wb") as vec:
        vectors = VectorFileWriter(vec, total, ctx.dim, ctx.codec)
        for unit in units:
            data = read_range(unit.span, dim=ctx.dim, rows=np.arange(unit.start, unit.stop))
            x = prepare_vectors(data.vectors, ctx.metric, data.ids)
            gids = np.arange(unit.first_id, unit.first_id + len(x), dtype=np.int64)
            index.add_with_ids(x, gids)
            vectors.append(x)
            d, i = faiss.knn(ctx.queries, x, min(k, len(x)), metric=faiss_metric(ctx.metric))
            best_d, best_i = merge_topk([(best_d, best_i), (d, i + unit.first_id)], k, ctx.metric)
            hashes.append(id_hashes(row_keys(data.ids, data.metadata)))
            table = pa.Table.from_arrays(
                [
                    pa.array(gids),
                    pa.array(data.ids, pa.string()),
                    *data.metadata.columns,
                ],
                names=[IID, ID, *data.metadata.column_names],
            )
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            fitted = conform_table(table, writer.schema)
            if fitted is None:
                raise VectorError(
                    f"the metadata columns of {unit.span.path!r} differ from the other inputs'"
                )
            writer.write_table(fitted, row_group_size=docs_row_group(writer.schema))
            rows += len(x)
        if writer is not None:
            writer.close()
        vectors.close()
    write_index(index, ctx.fs, ctx.partial(name, "faiss"))
    return PartialResult(
        units[0].shard, name, rows, best_d, best_i, np.concatenate(hashes), current_node()
    )


def row_keys(ids: list[str], metadata: pa.Table) -> list[str]:
    """What must be unique per row: the id, or for chunk rows the id and chunk number."""
    if CHUNK not in metadata.column_names:
        return ids
    chunks = metadata.column(CHUNK).to_pylist()
    return [f"{i} (chunk {c})" for i, c in zip(ids, chunks, strict=True)]


def check_unique_ids(partials: list[PartialResult], ctx: BuildContext) -> None:
    """Refuse inputs that repeat an id, naming some (read back from the partial docs)."""
    hashes = np.concatenate([p.id_hashes for p in partials]) if partials else np.zeros(0, np.uint64)
    uniq, counts = np.unique(hashes, return_counts=True)
    dup = set(uniq[counts > 1].tolist())
    if not dup:
        return
    names: list[str] = []
    for p in partials:
        with ctx.fs.open(ctx.partial(p.name, "parquet"), "rb") as fh:
            table = pq.read_table(fh)
            ids = row_keys(table.column(ID).to_pylist(), table)
        names += [i for i, h in zip(ids, p.id_hashes.tolist(), strict=True) if h in dup]
    shown = sorted(set(names))[:5]
    raise VectorError(
        f"{len(names) - len(set(names))} duplicate ids in the input, e.g. {', '.join(map(repr, shown))}; ids must be unique"
    )
