"""The vector file of a serving shard: every indexed vector once, row-aligned with the
shard's docs table, in the precision the index was built with.

    versions/v-00002/vectors-NNNNN.npy   (rows, d) float32, float16 or int8

A plain `.npy` (NumPy's format: a short header, then the rows), so any tool reads it.
int8 rows are scalar-quantized per dimension with ranges calibrated on the build's
training sample (the min and max of each dimension, as sentence-transformers'
`quantize_embeddings` calibrates): `code = round((x - low) / (high - low) * 255) - 128`.
Reads give float32 back (dequantized: int8 vectors are close to, not equal to, the
originals). Exact rescoring, `include: ["vector"]`, vector arithmetic by id, exact
filtered search, updates and retraining read it.

Rows are read with `os.pread`, not a memory map: the pages a search touches stay in the
page cache, not in the serving process's resident memory.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import fsspec
import numpy as np

VectorDtype = Literal["float32", "float16", "int8"]
VECTOR_DTYPES: tuple[VectorDtype, ...] = ("float32", "float16", "int8")
_INT8_LEVELS = 255.0


def vectors_file(shard: int) -> str:
    return f"vectors-{shard:05d}.npy"


@dataclass(frozen=True)
class VectorCodec:
    """How the vector files store a vector: the dtype and, for int8, each dimension's
    calibrated range."""

    dtype: VectorDtype = "float32"
    low: tuple[float, ...] | None = None  # int8: per-dimension minimum
    high: tuple[float, ...] | None = None  # int8: per-dimension maximum

    @classmethod
    def calibrate(cls, dtype: VectorDtype, sample: np.ndarray) -> VectorCodec:
        """The codec for `dtype`; int8 takes its ranges from `sample` (vectors as indexed)."""
        if dtype not in VECTOR_DTYPES:
            raise ValueError(f"vector store must be one of {VECTOR_DTYPES}, got {dtype!r}")
        if dtype != "int8":
            return cls(dtype)
        if not len(sample):
            raise ValueError("an int8 vector store needs a calibration sample")
        low, high = sample.min(axis=0), sample.max(axis=0)
        high = np.where(high > low, high, low + 1e-6)  # a constant dimension: any range
        return cls(dtype, tuple(map(float, low)), tuple(map(float, high)))

    @property
    def itemsize(self) -> int:
        return int(np.dtype(self.dtype).itemsize)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """float32 rows -> stored rows."""
        if self.dtype == "float32":
            return np.ascontiguousarray(x, dtype=np.float32)
        if self.dtype == "float16":
            return np.ascontiguousarray(x, dtype=np.float16)
        low, high = self._range()
        scaled = (np.asarray(x, np.float32) - low) / (high - low) * _INT8_LEVELS - 128.0
        return np.clip(np.rint(scaled), -128, 127).astype(np.int8)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """Stored rows -> float32 rows (int8: dequantized)."""
        if self.dtype != "int8":
            return np.ascontiguousarray(rows, dtype=np.float32)
        low, high = self._range()
        return ((rows.astype(np.float32) + 128.0) / _INT8_LEVELS * (high - low) + low).astype(
            np.float32
        )

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.low is not None and self.high is not None
        return np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype}
        if self.low is not None:
            out.update(low=list(self.low), high=list(self.high or ()))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VectorCodec:
        low, high = data.get("low"), data.get("high")
        return cls(
            data["dtype"],
            tuple(map(float, low)) if low is not None else None,
            tuple(map(float, high)) if high is not None else None,
        )


def _header(rows: int, dim: int, dtype: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (rows, dim)}
    )
    return buf.getvalue()


class VectorFileWriter:
    """Writes a vector file of a known row count, rows appended in order (streamed: any
    fsspec file system, never the whole file in memory)."""

    def __init__(self, fh: BinaryIO, rows: int, dim: int, codec: VectorCodec) -> None:
        self.fh, self.rows, self.dim, self.codec = fh, rows, dim, codec
        self.written = 0
        fh.write(_header(rows, dim, codec.dtype))

    def append(self, x: np.ndarray) -> None:
        """Append float32 rows (encoded here)."""
        self.append_stored(self.codec.encode(x))

    def append_stored(self, rows: np.ndarray) -> None:
        """Append rows already in the file's dtype."""
        if rows.shape[1:] != (self.dim,) or self.written + len(rows) > self.rows:
            raise ValueError(f"rows of shape {rows.shape} do not fit the vector file")
        self.fh.write(np.ascontiguousarray(rows, dtype=self.codec.dtype).tobytes())
        self.written += len(rows)

    def close(self) -> None:
        if self.written != self.rows:
            raise ValueError(f"the vector file got {self.written} rows of {self.rows} declared")


def write_vector_file(
    fs: fsspec.AbstractFileSystem, path: str, x: np.ndarray, codec: VectorCodec
) -> None:
    """A vector file of float32 rows `x`."""
    with fs.open(path, "wb") as fh:
        writer = VectorFileWriter(fh, len(x), x.shape[1], codec)
        writer.append(x)
        writer.close()


def concat_vector_files(
    fs: fsspec.AbstractFileSystem, parts: list[str], target: str, codec: VectorCodec
) -> int:
    """One vector file of the parts' rows in order (block by block); returns its rows."""
    shapes = [_shape(fs, p) for p in parts]
    rows, dim = sum(s[0] for s in shapes), shapes[0][1]
    with fs.open(target, "wb") as out:
        writer = VectorFileWriter(out, rows, dim, codec)
        for part in parts:
            with fs.open(part, "rb") as fh:
                (n, _), offset = _read_header(fh)
                for start in range(0, n, 65_536):
                    writer.append_stored(_read_block(fh, offset, start, min(n, start + 65_536),
                                                     dim, codec.dtype))  # fmt: skip
        writer.close()
    return rows


def read_vector_rows(
    fs: fsspec.AbstractFileSystem, path: str, codec: VectorCodec, start: int, stop: int
) -> np.ndarray:
    """Rows [start, stop) of a vector file on any file system, as float32."""
    with fs.open(path, "rb") as fh:
        (n, dim), offset = _read_header(fh)
        return codec.decode(_read_block(fh, offset, start, min(stop, n), dim, codec.dtype))


def read_vector_positions(
    fs: fsspec.AbstractFileSystem, path: str, codec: VectorCodec, positions: np.ndarray
) -> np.ndarray:
    """The float32 rows at `positions` of a vector file on any file system (one read per
    run of neighbouring rows)."""
    positions = np.asarray(positions, dtype=np.int64)
    with fs.open(path, "rb") as fh:
        (_, dim), offset = _read_header(fh)
        if not len(positions):
            return np.zeros((0, dim), np.float32)
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        blocks = [
            _read_block(fh, offset, int(run[0]), int(run[-1]) + 1, dim, codec.dtype)
            for run in np.split(ordered, breaks)
        ]
    out = np.empty((len(positions), dim), np.float32)
    out[order] = codec.decode(np.concatenate(blocks))
    return out


def filter_vector_file(
    fs: fsspec.AbstractFileSystem,
    source: str,
    target: str,
    codec: VectorCodec,
    keep: np.ndarray,
    extra: np.ndarray,
) -> None:
    """A vector file of `source`'s rows where `keep` is true, then the float32 rows
    `extra` (an update's new vectors), block by block."""
    with fs.open(source, "rb") as fh, fs.open(target, "wb") as out:
        (n, dim), offset = _read_header(fh)
        writer = VectorFileWriter(out, int(keep.sum()) + len(extra), dim, codec)
        for start in range(0, n, 65_536):
            stop = min(n, start + 65_536)
            block = _read_block(fh, offset, start, stop, dim, codec.dtype)
            writer.append_stored(block[keep[start:stop]])
        if len(extra):
            writer.append(extra)
        writer.close()


def _shape(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, int]:
    with fs.open(path, "rb") as fh:
        return _read_header(fh)[0]


def _read_header(fh: BinaryIO) -> tuple[tuple[int, int], int]:
    major, _ = np.lib.format.read_magic(fh)
    read = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    shape, _, _ = read(fh)
    return (int(shape[0]), int(shape[1])), int(fh.tell())


def _read_block(
    fh: BinaryIO, offset: int, start: int, stop: int, dim: int, dtype: str
) -> np.ndarray:
    row = dim * np.dtype(dtype).itemsize
    fh.seek(offset + start * row)
    raw = fh.read(max(0, stop - start) * row)
    return np.frombuffer(raw, dtype=dtype).reshape(-1, dim)


class VectorFile:
    """A local vector file opened for random row reads."""

    def __init__(self, path: str, codec: VectorCodec) -> None:
        self.path, self.codec = path, codec
        with open(path, "rb") as fh:
            (self.rows, self.dim), self.offset = _read_header(fh)
        self.row_bytes = self.dim * codec.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.rows

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def get(self, positions: np.ndarray) -> np.ndarray:
        """The float32 vectors at row `positions` (one read per row, or one per run of
        neighbouring rows)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.rows):
            raise IndexError(f"row outside the vector file {self.path!r} ({self.rows} rows)")
        if len(positions) > 64 and np.all(np.diff(positions) == 1):
            start = int(positions[0])
            raw = os.pread(
                self._fd, self.row_bytes * len(positions), self.offset + start * self.row_bytes
            )
        else:
            raw = b"".join(
                os.pread(self._fd, self.row_bytes, self.offset + p * self.row_bytes)
                for p in positions.tolist()
            )
        stored = np.frombuffer(raw, dtype=self.codec.dtype).reshape(len(positions), self.dim)
        return self.codec.decode(stored)
