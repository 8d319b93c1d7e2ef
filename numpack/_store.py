"""NumPack: a directory of named arrays, on either backend."""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, SupportsIndex, overload

import numpy as np
import numpy.typing as npt

from . import (
    _backend,
    _compat07,
    _dtypes,
    _import07,
    _indexing,
    _package07,
    _progress,
    _repr,
)
from ._backend import Entry
from ._batch import BatchModeContext, WritableBatchMode
from ._errors import (
    ArrayNotFoundError,
    CorruptStoreError,
    InvalidArgumentError,
    InvalidTypeError,
    RowIndexError,
    ShapeMismatchError,
    StoreClosedError,
    StrictContextError,
    os_errors,
)
from ._lazy import LazyArray, RowIndex, RowsIndex, as_bytes


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise InvalidTypeError(f"array names are str, got {type(name).__name__}")
    if not name:
        raise InvalidArgumentError("array names must not be empty")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"array name {name!r} is not valid UTF-8") from None
    return name


def _names(name) -> list[str]:
    """One name or an iterable of names, checked, as a list."""
    if isinstance(name, str):
        return [_check_name(name)]
    try:
        names = list(name)
    except TypeError:
        raise InvalidTypeError(f"expected an array name or a list of them, got {name!r}") from None
    return [_check_name(n) for n in names]


def _compression(compress, level, block_rows) -> int | None:
    """The zstd level to save with, or None for raw arrays; checks the keywords."""
    for key, value in (("compression_level", level), ("block_rows", block_rows)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidTypeError(f"{key} must be an int, got {value!r}")
    if not compress:
        if level is not None or block_rows is not None:
            raise InvalidArgumentError("compression_level and block_rows need compress=True")
        return None
    # At most 2**63 - 1, as readers require (FORMAT.md 7); larger ones would not even fit
    # the metadata's uint64 (an OverflowError deep in a backend).
    if block_rows is not None and not 1 <= block_rows <= 2**63 - 1:
        raise InvalidArgumentError(f"block_rows must be in 1..2**63-1, got {block_rows}")
    level = 3 if level is None else level
    if not -7 <= level <= 22:
        raise InvalidArgumentError(f"compression_level must be in -7..22 (zstd), got {level}")
    return level


def _check_arrays(arrays, method: str) -> Mapping:
    if not isinstance(arrays, Mapping):
        raise InvalidTypeError(f"{method}() takes a dict of {{name: array}}")
    for name in arrays:
        _check_name(name)
    return arrays


class NumPack:
    """A directory store of named NumPy arrays.

    `backend` is "rust", "python" or None (the NUMPACK_BACKEND environment variable, else rust
    when the extension imports). `lock_timeout` is how long, in seconds, a call that writes waits
    for another process's write lock before raising StoreLockedError. With `durable=True` every
    call that writes fsyncs its data files, undo records and commit record (spec/FORMAT.md 6)
    before it returns, so a power loss cannot undo or tear it; by default nothing is fsynced
    (as np.save), which survives a killed process but not a power loss.

    `with npk.transaction():` makes the calls inside one commit: other readers see all of them
    or none, and an exception undoes them all. NumPack 0.7's `batch_mode()` and
    `writable_batch_mode()` are transactions too.

    NumPack 0.7's keywords: with `strict_context_mode=True` every call made outside a `with`
    block raises StrictContextError (a RuntimeError); with `warn_no_context=True` (None: True
    on Windows) the first such call warns; `force_gc_on_close=True` runs a garbage-collection
    pass in `close()`. The store is open once the NumPack exists (0.7 waits for `open()` or a
    `with` block; both work here too).
    """

    _store: Any = None  # the backend's Store; None once closed
    _batch: BatchModeContext | None = None
    _txn_depth = 0
    _context_rule: str | None = None  # "strict", "warn" or None: see _compat07.context_rule
    _with_depth = 0  # `with` blocks entered and not left

    @os_errors
    def __init__(
        self,
        filename: str | os.PathLike[str],
        drop_if_exists: bool = False,
        backend: str | None = None,
        lock_timeout: float = 10.0,
        durable: bool = False,
        *,
        strict_context_mode: bool = False,
        warn_no_context: bool | None = None,
        force_gc_on_close: bool = False,
    ) -> None:
        self.backend, self._module = _backend.load(backend)
        self._path = os.path.abspath(os.fspath(filename))
        if not isinstance(durable, bool):
            raise InvalidTypeError(f"durable must be a bool, got {durable!r}")
        self._durable = durable
        real = (int, float, np.integer, np.floating)
        if isinstance(lock_timeout, (bool, np.bool_)) or not isinstance(lock_timeout, real):
            raise InvalidTypeError(f"lock_timeout must be seconds (a number), got {lock_timeout!r}")
        if not 0 <= lock_timeout < 2**63:  # NaN fails too; Rust's Duration holds < 2**64 s
            raise InvalidArgumentError(
                f"lock_timeout must be seconds from 0 up to (not including) 2**63, "
                f"got {lock_timeout!r}"
            )
        self._lock_timeout = float(lock_timeout)
        self._context_rule = _compat07.context_rule(strict_context_mode, warn_no_context)
        self._force_gc = bool(force_gc_on_close)
        self._open_store()
        if drop_if_exists:
            with self._unruled():  # making the store is no use of it outside a `with`
                self.reset()

    @os_errors
    def _open_store(self) -> None:
        try:
            self._store = self._module.Store(self._path, self._lock_timeout, self._durable)
        except InvalidArgumentError as e:
            if _package07.is_package07(self._path):
                raise InvalidArgumentError(
                    f"{self._path} is a package written by NumPack 0.7, which numpack does not "
                    "open in place: numpack.unpack() converts it into a store directory"
                ) from e
            raise
        except CorruptStoreError as e:
            if _import07.is_store07(self._path):
                raise CorruptStoreError(
                    f"{self._path} is a store written by NumPack 0.7, whose format numpack "
                    "does not open: convert it with numpack.import_numpack07(src, dst)"
                ) from e
            raise

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _s(self):
        store = self._store
        if store is None:
            raise StoreClosedError(f"the NumPack at {self._path} is closed (open() reopens it)")
        if self._context_rule is not None and not self._with_depth:
            self._outside_with()
        if self._batch is not None:
            self._batch.settle()  # every call but batch_mode's load/save sees the saved arrays
        return store

    def _outside_with(self) -> None:
        """A call outside a `with` block under strict_context_mode or warn_no_context."""
        if self._context_rule == "strict":
            raise StrictContextError(
                f"the NumPack at {self._path} was made with strict_context_mode=True: "
                "use it inside `with NumPack(...) as npk:`"
            )
        self._context_rule = None  # warn once
        warnings.warn(
            f"the NumPack at {self._path} is used outside a `with` block (warn_no_context): "
            "numpack works without one, and close() releases its files",
            UserWarning,
            stacklevel=_compat07.user_stacklevel(),
        )

    # -- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[NumPack]:
        """Make every call inside the block one commit, all or nothing.

        The block holds the store's write lock (other writers wait; readers go on, seeing the
        store as before the block until it ends). Calls inside see their own writes. An
        exception leaves the store as it was before the block: rows `replace` wrote in place
        are put back, new files deleted. A transaction inside a transaction joins it. Rows of
        raw arrays replaced inside are written in place at once, so a reader reading exactly
        those rows may see them before the commit (as with np.memmap).
        """
        if self._txn_depth:
            self._txn_depth += 1
            try:
                yield self
            finally:
                self._txn_depth -= 1
            return
        self._txn_call("begin")
        self._txn_depth = 1
        try:
            yield self
        except BaseException:
            self._txn_depth = 0
            if self._store is not None:
                self._txn_call("abort")
            raise
        self._txn_depth = 0
        self._txn_call("commit")

    @os_errors
    def _txn_call(self, step: str) -> None:
        getattr(self._s, step)()

    def batch_mode(self, memory_limit: float | None = None) -> BatchModeContext:
        """NumPack 0.7's batch mode: a transaction in which `load` returns cached arrays and
        `save` only updates the cache; saved arrays are written at the end (see
        `BatchModeContext`)."""
        return BatchModeContext(self, memory_limit)

    def writable_batch_mode(self) -> WritableBatchMode:
        """NumPack 0.7's writable batch mode: `wb.load(name)` gives a writable memory map of a
        raw array, committed (modified time) at the end. Writes through it are not atomic, as
        with np.memmap (see `WritableBatchMode`)."""
        return WritableBatchMode(self)

    @property
    def path(self) -> str:
        return self._path

    def _shape(self, name: str) -> tuple[int, ...]:
        """The logical shape of an array."""
        return tuple(self._s.info(_check_name(name))[1])

    # -- writes -----------------------------------------------------------------------------

    @os_errors
    def save(
        self,
        arrays: Mapping[str, npt.ArrayLike],
        compress: bool = False,
        compression_level: int | None = None,
        block_rows: int | None = None,
        *,
        progress: bool = False,
    ) -> None:
        """Create or overwrite whole arrays, all in one atomic step.

        With `compress=True` each array is stored as independently zstd-compressed blocks of
        `block_rows` rows (default: about 64 KiB of raw data a block) at `compression_level`
        (default 3), which reads, gathers and writes still reach block by block.

        `progress=True` shows a tqdm bar (when tqdm is installed; otherwise nothing) of one
        step per array as it is brought to the on-disk form (little-endian, C order), then
        one step for writing and committing them all. The save stays a single atomic commit,
        so that last step, where the bytes are written (and compressed), is one tick.
        """
        level = _compression(compress, compression_level, block_rows)
        arrays = _check_arrays(arrays, "save")
        batch = self._batch
        if batch is not None and level is None and not batch.flushing:
            batch.save(arrays)
            return
        items = []
        with _progress.bar(progress, len(arrays) + 1, "numpack save", unit="step") as bar:
            for name, arr in arrays.items():
                a = _dtypes.to_disk(arr, name)
                items.append((name, a.dtype.str, a.shape, as_bytes(a)))
                bar.update(1)
            self._s.save(items, level, block_rows)
            bar.update(1)

    @os_errors
    def append(self, arrays: Mapping[str, npt.ArrayLike]) -> None:
        """Add rows at the end of arrays, in place; an array that does not exist is created."""
        items = []
        for name, arr in _check_arrays(arrays, "append").items():
            try:
                dtype, shape, _ = self._s.info(name)
            except ArrayNotFoundError:
                a = _dtypes.to_disk(arr, name)
            else:
                a = _dtypes.cast_rows(arr, np.dtype(dtype), shape[1:], name)
            items.append((name, a.dtype.str, a.shape, as_bytes(a)))
        self._s.append(items)

    @os_errors
    def replace(self, arrays: Mapping[str, npt.ArrayLike], indexes: RowIndex) -> None:
        """Overwrite rows in place: `arrays[name]` holds the new rows for `indexes`."""
        items = []
        for name, arr in _check_arrays(arrays, "replace").items():
            dtype, shape, _ = self._s.info(name)
            sel, _ = _indexing.rows(indexes, shape[0], name)
            if isinstance(sel, slice):
                sel = np.arange(sel.start, sel.stop, dtype=np.int64)
            a = _dtypes.cast_rows(arr, np.dtype(dtype), shape[1:], name)
            if len(a) != len(sel):
                if len(a) != 1:
                    raise ShapeMismatchError(
                        f"array {name!r}: {len(a)} rows given for {len(sel)} indexes"
                    )
                a = np.ascontiguousarray(np.broadcast_to(a, (len(sel),) + a.shape[1:]))
            items.append((name, sel, as_bytes(a)))
        self._s.replace(items)

    @os_errors
    def drop(self, name: str | Sequence[str], indexes: RowIndex | None = None) -> None:
        """Delete whole arrays (`name` a str or a list of them), or rows of one array."""
        if indexes is None:
            self._s.drop_arrays(_names(name))
            return
        if not isinstance(name, str):
            raise InvalidTypeError("drop(name, indexes) deletes rows of a single array")
        shape = self._shape(name)
        sel, _ = _indexing.rows(indexes, shape[0], name)
        if isinstance(sel, slice):
            sel = np.arange(sel.start, sel.stop, dtype=np.int64)
        self._s.drop_rows(name, np.unique(sel))

    @os_errors
    def compact(self, name: str | Sequence[str] | None = None, *, progress: bool = False) -> None:
        """Reclaim the space of dropped rows (of one array, a list, or all of them).

        `progress=True` shows a tqdm bar (when tqdm is installed; otherwise nothing) over the
        bytes on disk of the arrays that need rewriting; it then compacts them one array (and
        one commit) at a time, which changes no values, so no reader can tell the difference.
        """
        names = None if name is None else _names(name)
        if not _progress.check(progress):
            self._s.compact(names)
            return
        entries = {e.name: e for e in self._entries()}
        if names is None:  # the arrays with something to reclaim; the final call sweeps
            todo = [n for n, e in entries.items() if self._reclaimable(e)]
        else:
            for n in names:  # every name exists, or nothing is compacted
                self._s.info(n)
            todo = list(dict.fromkeys(names))
        total = sum(entries[n].bytes_on_disk for n in todo if n in entries)
        with _progress.bar(True, total, "numpack compact") as bar:
            for n in todo:
                self._s.compact([n])
                bar.update(entries[n].bytes_on_disk if n in entries else 0)
            if names is None:
                self._s.compact(None)

    def _entries(self) -> list[Entry]:
        return [Entry._make(e) for e in self._s.entries()]

    def _reclaimable(self, e: Entry) -> bool:
        """Whether compaction would reclaim space: dropped rows, or superseded blocks (the data
        file holds more than the blocks' stored bytes). Arrays of a codec this numpack cannot
        read are skipped, as compact() skips them."""
        if e.dropped:
            return True
        stored = None if e.compression is None else e.compression.get("stored_bytes")
        if stored is None:
            return False
        return os.stat(os.path.join(self._path, e.file)).st_size > stored

    @os_errors
    def reset(self) -> None:
        """Remove every array."""
        self._s.reset()

    def update(self, array_name: str) -> None:
        """NumPack 0.7's name for `compact(array_name)`: reclaim the space of dropped rows."""
        self.compact(_check_name(array_name))

    @os_errors
    def clone(self, source_name: str, target_name: str) -> None:
        """Copy the array `source_name` to a new array `target_name` (NumPack 0.7's clone):
        its live rows, dtype and compression, in one commit, a chunk of rows at a time (so
        arrays larger than memory clone). ArrayNotFoundError (a KeyError) when the source is
        missing, InvalidArgumentError (a ValueError) when the target exists."""
        _check_name(target_name)
        with self.transaction():  # holds the write lock: the check below stays true
            if target_name in self._s.names():
                raise InvalidArgumentError(f"array {target_name!r} already exists")
            view = self._s.view(_check_name(source_name))
            comp = next(e.compression for e in self._entries() if e.name == source_name)
            level = None if comp is None else comp["level"]
            block_rows = None if comp is None else comp["block_rows"]
            lazy = LazyArray(view, self._path, source_name, self.backend)
            row_bytes = lazy.itemsize * int(np.prod(lazy.shape[1:], dtype=np.int64))
            step = _compat07.chunk_rows(row_bytes, block_rows or 1)
            for start in range(0, max(1, len(lazy)), step):
                rows = _dtypes.to_disk(lazy.rows(slice(start, start + step)), target_name)
                item = [(target_name, rows.dtype.str, rows.shape, as_bytes(rows))]
                if start == 0:
                    self._s.save(item, level, block_rows)
                else:
                    self._s.append(item)

    # -- reads ------------------------------------------------------------------------------

    @overload
    def load(self, name: str, lazy: Literal[False] = ...) -> npt.NDArray[Any]: ...
    @overload
    def load(self, name: str, lazy: Literal[True]) -> LazyArray: ...
    @overload
    def load(self, name: str, lazy: bool = ...) -> npt.NDArray[Any] | LazyArray: ...
    @os_errors
    def load(self, name: str, lazy: bool = False) -> npt.NDArray[Any] | LazyArray:
        """The whole array: an ndarray that owns its memory, or a LazyArray (nothing read yet)."""
        if not lazy:
            if self._batch is not None:
                return self._batch.load(_check_name(name))
            return self._load_eager(name)
        view = self._s.view(_check_name(name))
        compression = None
        if view.buffer() is None:  # compressed, dropped rows or empty: ask the metadata
            for e in self._entries():
                if e.name == name:
                    compression = e.compression
                    break
        return LazyArray(view, self._path, name, self.backend, compression)

    def _load_eager(self, name: str) -> npt.NDArray[Any]:
        view = self._s.view(_check_name(name))
        return LazyArray(view, self._path, name, self.backend).to_numpy()

    @overload
    def getitem(self, name: str, indexes: RowsIndex) -> npt.NDArray[Any]: ...
    @overload
    def getitem(self, name: str, indexes: SupportsIndex | Sequence[int]) -> Any: ...
    @os_errors
    def getitem(self, name: str, indexes: RowIndex) -> Any:
        """Rows of an array, gathered in the order of `indexes` (an int drops the first axis)."""
        view = self._s.view(_check_name(name))
        if (
            type(indexes) is np.ndarray
            and indexes.dtype == np.int64
            and indexes.ndim == 1
            and indexes.flags.c_contiguous
        ):
            # The common case in a hot loop: the backend checks the rows itself; negative or
            # out-of-range ones take the general path below (which resolves or reports them).
            out = np.empty((len(indexes), *view.shape[1:]), _dtypes.native(view.dtype))
            try:
                view.gather(indexes, as_bytes(out))
                return out
            except RowIndexError:
                pass
        return LazyArray(view, self._path, name, self.backend).rows(indexes)

    @os_errors
    def stream_load(self, name: str, buffer_size: int | None = 1000) -> StreamLoader:
        """Iterate over an array in batches of `buffer_size` rows (`len()` gives the count);
        `buffer_size=None` is NumPack 0.7's one row at a time (batches of one row)."""
        if buffer_size is None:
            buffer_size = 1
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, (int, np.integer)):
            raise InvalidTypeError("buffer_size must be an int")
        if buffer_size < 1:
            raise InvalidArgumentError(f"buffer_size must be at least 1, got {buffer_size}")
        view = self._s.view(_check_name(name))
        return StreamLoader(LazyArray(view, self._path, name, self.backend), int(buffer_size))

    @overload
    def get_shape(self, name: None = None) -> dict[str, tuple[int, ...]]: ...
    @overload
    def get_shape(self, name: str) -> tuple[int, ...]: ...
    @os_errors
    def get_shape(self, name: str | None = None) -> dict[str, tuple[int, ...]] | tuple[int, ...]:
        """The shape of one array, or {name: shape} of all."""
        if name is None:
            return {e.name: tuple(e.shape) for e in self._entries()}
        return self._shape(name)

    @os_errors
    def get_member_list(self) -> list[str]:
        return list(self._s.names())

    @os_errors
    def get_modify_time(self, name: str) -> int:
        """When the array last changed, in microseconds since the epoch."""
        return self._s.info(_check_name(name))[2]

    @os_errors
    def get_metadata(self) -> dict[str, Any]:
        """A plain dict describing the store and each array.

        It also carries NumPack 0.7's keys: `total_arrays` and `base_dir`, and per array
        `data_file`, `last_modified` and `size_bytes` (the same facts as `file`, `modified_us`
        and `nbytes`); a shape is a tuple that also equals the list 0.7 gives.
        """
        arrays = {}
        for name, dtype, shape, dropped, modified, file, disk, comp in self._entries():
            dt = _dtypes.native(dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            arrays[name] = {
                "dtype": str(dt),
                "shape": _compat07.Shape(shape),
                "nbytes": nbytes,
                "rows_dropped": dropped,
                "bytes_on_disk": disk,
                "modified_us": modified,
                "file": file,
                "compression": comp,
                "data_file": file,
                "last_modified": modified,
                "size_bytes": nbytes,
            }
        return {
            "path": self._path,
            "backend": self.backend,
            "format_version": self._s.format_version(),
            "arrays": arrays,
            "total_arrays": len(arrays),
            "base_dir": self._path,
        }

    @os_errors
    def get_io_stats(self) -> dict[str, Any]:
        """NumPack 0.7's statistics call. numpack counts no per-call I/O (reads go through the
        operating system's page cache), so `stats_available` is False, as in 0.7; what it
        reports is what the store holds: `backend_type`, `format_version`, `arrays`, `nbytes`
        (the live rows' bytes), `bytes_on_disk` and `rows_dropped` (rows `compact()` or
        `update()` would reclaim)."""
        entries = self._entries()
        return {
            "backend_type": self.backend,
            "stats_available": False,
            "format_version": self._s.format_version(),
            "arrays": len(entries),
            "nbytes": sum(
                int(np.prod(e.shape, dtype=np.int64)) * _dtypes.native(e.dtype).itemsize
                for e in entries
            ),
            "bytes_on_disk": sum(e.bytes_on_disk for e in entries),
            "rows_dropped": sum(e.dropped for e in entries),
        }

    @os_errors
    def has_array(self, name: str) -> bool:
        return _check_name(name) in self._s.names()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has_array(name)

    def __len__(self) -> int:
        return len(self.get_member_list())

    def __iter__(self) -> Iterator[str]:
        return iter(self.get_member_list())

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        return self.load(name)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self, force_gc: bool | None = None) -> None:
        """Release the store's files; further calls raise StoreClosedError until `open()`.
        Idempotent. `force_gc=True` (None: the `force_gc_on_close` given to the constructor)
        then runs a garbage-collection pass, as NumPack 0.7 does."""
        store, self._store = self._store, None
        if store is not None:
            if self._txn_depth:  # a transaction left open is undone, as an exception would
                self._txn_depth = 0
                self._batch = None
                store.abort()
            store.close()
        if force_gc or (force_gc is None and self._force_gc):
            gc.collect()

    @os_errors
    def open(self) -> None:
        """NumPack 0.7's open(): reopens the store after `close()`; a no-op on an open one
        (numpack opens the store when the NumPack is made). Under `strict_context_mode` it
        raises StrictContextError outside a `with` block, as 0.7 documents."""
        if self._context_rule == "strict" and not self._with_depth:
            self._outside_with()
        if self._store is None:
            self._open_store()

    @property
    def is_opened(self) -> bool:
        """Whether calls work: True from construction until `close()`, and after `open()`."""
        return self._store is not None

    @property
    def is_closed(self) -> bool:
        return self._store is None

    @property
    def backend_type(self) -> str:
        """NumPack 0.7's name for `backend`: "rust" or "python"."""
        return self.backend

    def __enter__(self) -> NumPack:
        """Reopens a closed store (as NumPack 0.7 does); the block's end closes it."""
        if self._store is None:
            self._open_store()
        self._with_depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._with_depth = max(0, self._with_depth - 1)
        self.close()

    @contextlib.contextmanager
    def _unruled(self) -> Iterator[None]:
        """Reads that are no use of the store by the caller (a repr, the constructor's reset),
        which strict_context_mode does not refuse nor warn_no_context warn about."""
        self._with_depth += 1
        try:
            yield
        finally:
            self._with_depth -= 1

    def __repr__(self) -> str:
        """One line: path, backend, how many arrays, and the first few (name, shape, dtype,
        "zstd" when compressed)."""
        with self._unruled():
            return _repr.store_repr(self)

    def _repr_html_(self) -> str:
        """For Jupyter: a table of the arrays (name, shape, dtype, size on disk, compression
        ratio, rows dropped, modified time)."""
        with self._unruled():
            return _repr.store_html(self)


class StreamLoader:
    """Batches of rows of one array; has a length, so progress bars can show a total."""

    def __init__(self, lazy: LazyArray, batch: int) -> None:
        self._lazy, self._batch = lazy, batch

    def __len__(self) -> int:
        return -(-len(self._lazy) // self._batch)

    def __iter__(self) -> Iterator[npt.NDArray[Any]]:
        n, b = len(self._lazy), self._batch
        for start in range(0, n, b):
            yield self._lazy.rows(slice(start, start + b))


__all__ = ["NumPack", "StreamLoader"]
