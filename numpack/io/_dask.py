"""dask and dask.distributed: an array of a store as a dask array (to_dask, LazyArray.to_dask),
and a dask array written into a store from the workers (from_dask).

Nothing open crosses a process boundary: a task carries the store's path and the array's name
and opens the store itself, so the workers need the store's directory at the same path (a
shared file system).
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from typing import Any

import numpy as np

from .. import _dtypes
from .._errors import InvalidArgumentError, InvalidTypeError
from .._store import NumPack
from ._common import (
    StoreOrPath,
    batch_rows,
    check_name,
    fspath,
    opened,
    os_errors,
    require,
    row_bytes,
    supported,
)


def _da() -> Any:
    return require("dask.array", "dask")


class _Rows:
    """What the tasks of a dask array made by to_dask read: the array's path, name, backend and
    shape when the dask array was made. Each read opens the store by path in the process that
    runs it, checks the array still has that shape, and reads only the rows asked for."""

    def __init__(self, path: str, name: str, backend: str, shape: tuple, dtype: np.dtype) -> None:
        self.path, self.name, self.backend = path, name, backend
        self.shape, self.dtype, self.ndim = shape, dtype, len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        with opened(self.path, create=False, backend=self.backend) as npk:
            lazy = npk.load(self.name, lazy=True)
            if lazy.shape != self.shape:
                raise InvalidArgumentError(
                    f"array {self.name!r} in {self.path} changed shape from {self.shape} to "
                    f"{lazy.shape} after its dask array was made: make a new one"
                )
            return np.asarray(lazy[key])


def from_lazy(lazy: Any, chunks: Any = None) -> Any:
    """The dask array of a LazyArray (see LazyArray.to_dask)."""
    da = _da()
    import dask
    from dask.utils import parse_bytes

    if chunks is None:
        block = (lazy._compression or {}).get("block_rows", 1)
        target = parse_bytes(dask.config.get("array.chunk-size"))
        rows = batch_rows(row_bytes(lazy.shape, lazy.dtype), target, block)
        chunks = (min(rows, max(1, lazy.shape[0])),) + tuple(lazy.shape[1:])
    rows_source = _Rows(lazy._path, lazy._name, lazy._backend, lazy.shape, lazy.dtype)
    return da.from_array(
        rows_source,
        chunks=chunks,
        name=f"numpack-{lazy._name}-{uuid.uuid4().hex}",
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * lazy.ndim, lazy.dtype),
    )


def to_dask(
    npk_path: StoreOrPath, array_name: str, chunks: Any = None, *, backend: str | None = None
) -> Any:
    """The array `array_name` of the store at `npk_path` as a dask array.

    Its tasks open the store by path in whichever process or machine runs them (a worker of a
    `dask.distributed` cluster, say) and read only their own rows: raw arrays through the
    memory map, compressed arrays block by block; dropped rows are left out, as everywhere.
    `chunks` is anything `dask.array.from_array` takes; the default is rows of about dask's
    `array.chunk-size` (128 MiB), a whole number of compressed blocks for a compressed array
    (so no block is decoded by two tasks when the array has no dropped rows), and the full
    extent of the other axes. The dask array has the shape the array had when it was made;
    a task that finds another shape (rows appended or dropped since) raises
    InvalidArgumentError rather than return rows of a different array. `backend` is the
    backend the tasks open the store with (default: as NumPack() chooses).
    """
    with opened(npk_path, create=False, backend=backend) as npk:
        return from_lazy(npk.load(check_name(array_name), lazy=True), chunks)


class _Staging:
    """The target the tasks of from_dask write their rows into: a raw little-endian file of
    the whole array, each block written at its own offset with `pwrite` (disjoint ranges, so
    workers write at once without a lock)."""

    def __init__(self, path: str, shape: tuple, dtype: np.dtype) -> None:
        self.path, self.shape, self.dtype = path, shape, dtype
        self.row_bytes = row_bytes(shape, dtype)

    def __setitem__(self, key: Any, value: Any) -> None:
        rows = key[0] if isinstance(key, tuple) else key
        data = np.ascontiguousarray(value, dtype=self.dtype)
        view = data.reshape(-1).view(np.uint8).data
        offset = (rows.start or 0) * self.row_bytes
        with os_errors():
            fd = os.open(self.path, os.O_WRONLY)
            try:
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
            finally:
                os.close(fd)


def from_dask(
    darr: Any,
    npk_path: StoreOrPath,
    array_name: str,
    *,
    compress: bool = False,
    backend: str | None = None,
) -> None:
    """Compute the dask array `darr` and store it as the array `array_name` of the store at
    `npk_path` (created if needed; an array of that name is replaced), all or nothing.

    The workers write in parallel: each task writes its block's rows at their offset into one
    staging file of the whole array, beside the store (`.<store>.<id>.numpack-dask`), with no
    lock, the ranges being disjoint. When every task has finished, this process commits the
    array with a single `save` (`compress=True` compresses it, block by block, in parallel),
    which takes the store's write lock once. Readers see the array complete or not at all; if
    a task fails, the store is unchanged. The staging file is removed either way. The cost: the
    array is written twice (staging file, then store) and the commit runs in this process.

    Errors: InvalidTypeError for something that is not a dask array, DTypeError for a dtype a
    store does not hold, InvalidArgumentError for a 0-d array or unknown chunk sizes (call
    `darr.compute_chunk_sizes()` first).
    """
    da = _da()
    if not isinstance(darr, da.Array):
        raise InvalidTypeError(f"from_dask takes a dask array, got {type(darr).__name__}")
    name = check_name(array_name)
    store_path = npk_path.path if isinstance(npk_path, NumPack) else fspath(npk_path, "npk_path")
    if darr.ndim == 0:
        raise InvalidArgumentError(f"array {name!r}: a 0-d dask array has no rows")
    if any(math.isnan(c) for c in darr.chunks[0]):
        raise InvalidArgumentError(
            f"array {name!r}: the dask array's chunk sizes are unknown; "
            "call darr.compute_chunk_sizes() first"
        )
    dtype = _dtypes.disk_dtype(supported(darr.dtype, f"array {name!r}"), name)
    if darr.ndim > 1:  # each block a run of whole rows: one contiguous range of the file
        darr = darr.rechunk({axis: -1 for axis in range(1, darr.ndim)})
    shape = tuple(int(d) for d in darr.shape)
    parent, base = os.path.split(os.path.abspath(store_path))
    staging = os.path.join(parent, f".{base}.{uuid.uuid4().hex[:12]}.numpack-dask")
    nbytes = row_bytes(shape, dtype) * shape[0]
    try:
        with os_errors(), open(staging, "wb") as f:
            f.truncate(nbytes)
        da.store(darr, _Staging(staging, shape, dtype), lock=False, compute=True)
        with os_errors():
            rows = np.memmap(staging, dtype, "r", shape=shape) if nbytes else np.empty(shape, dtype)
        with opened(npk_path, create=True, backend=backend) as npk:
            npk.save({name: rows}, compress=compress)
        del rows
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
