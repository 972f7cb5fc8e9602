"""Index build, phase 2: the training sample, read by tasks from the inputs (the driver
never loads the set), and the one task that trains the empty index on it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from embedlib.distributed import map_tasks
from embedlib.index.binary import BinaryIndex
from embedlib.index.build.ivf_file import streamable
from embedlib.index.build.plan import faiss_metric
from embedlib.index.build.staging import BuildContext
from embedlib.index.faiss_ops import new_index, prepare_vectors, use_task_cpus, write_index
from embedlib.index.store.vectors import VectorCodec
from embedlib.options import RunOptions
from embedlib.sets.sources import RowRange, VectorSource, read_range


def sample_rows(span: RowRange, positions: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Task: the vectors at `positions` (0 = the span's first row) and their global ids."""
    data = read_range(span, dim=dim, rows=positions)
    return data.vectors, span.offset + positions


def read_rows(
    src: VectorSource, global_ids: np.ndarray, run: RunOptions
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read the rows with these global ids, one task per span that holds some."""
    calls = row_picks(src, global_ids)
    return map_tasks(sample_rows, calls, run, desc="sampling") if calls else []


def row_picks(src: VectorSource, global_ids: np.ndarray) -> list[tuple[RowRange, np.ndarray, int]]:
    """(span, positions within it, dim) for each span that holds some of the sorted ids."""
    calls = []
    for span in src.ranges:
        lo = np.searchsorted(global_ids, span.offset)
        hi = np.searchsorted(global_ids, span.offset + span.rows)
        if hi > lo:
            calls.append((span, global_ids[lo:hi] - span.offset, src.dim))
    return calls


def train_index(
    ctx: BuildContext, seed: int, picks: list[tuple[RowRange, np.ndarray, int]]
) -> tuple[bool, VectorCodec]:
    """Task: read the sample (rows `picks` of each span, side by side in threads: never
    through the object store), train the empty index once on it, write `trained.faiss`.
    Returns whether its partial files can be merged list by list on disk, and the vector
    files' codec (an int8 one calibrated on the same sample)."""
    use_task_cpus()
    index = new_index(ctx.dim, ctx.plan.factory, faiss_metric(ctx.metric))
    x = np.zeros((0, ctx.dim), np.float32)
    if picks and (not index.is_trained or ctx.plan.store_vectors == "int8"):
        with ThreadPoolExecutor(faiss.omp_get_max_threads()) as pool:
            samples = list(pool.map(lambda pick: sample_rows(*pick), picks))
        x = (
            np.concatenate([v for v, _ in samples])
            if samples
            else np.zeros((0, ctx.dim), np.float32)
        )
        ids = [str(i) for _, g in samples for i in g]
        del samples
        x = prepare_vectors(x, ctx.metric, ids)
    if not index.is_trained:
        ivf = index.ivf if isinstance(index, BinaryIndex) else faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
        index.train(x)
    write_index(index, ctx.fs, ctx.trained)
    return streamable(index), VectorCodec.calibrate(ctx.plan.store_vectors, x)
