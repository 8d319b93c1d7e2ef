"""NumPack: a directory of named arrays, on either backend."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping

import numpy as np

from . import _backend, _dtypes, _indexing
from ._errors import (
    InvalidArgumentError,
    InvalidTypeError,
    NumPackError,
    ShapeMismatchError,
    StoreClosedError,
    StoreIOError,
)
from ._lazy import LazyArray, as_bytes


def _os_errors(method):
    """Report operating-system errors as StoreIOError, so every error is a NumPackError."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except NumPackError:
            raise
        except OSError as e:
            raise StoreIOError(e.errno, e.strerror or str(e), e.filename) from e

    return wrapper


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
    if block_rows is not None and block_rows < 1:
        raise InvalidArgumentError(f"block_rows must be at least 1, got {block_rows}")
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
    for another process's write lock before raising StoreLockedError.
    """

    def __init__(
        self,
        filename,
        drop_if_exists: bool = False,
        backend: str | None = None,
        lock_timeout: float = 10.0,
    ):
        self.backend, module = _backend.load(backend)
        self._path = os.path.abspath(os.fspath(filename))
        try:
            self._store = module.Store(self._path, float(lock_timeout))
        except NumPackError:
            raise
        except OSError as e:
            raise StoreIOError(e.errno, e.strerror or str(e), e.filename) from e
        if drop_if_exists:
            self.reset()

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _s(self):
        store = self._store
        if store is None:
            raise StoreClosedError(f"the NumPack at {self._path} is closed")
        return store

    @property
    def path(self) -> str:
        return self._path

    def _shape(self, name: str) -> tuple:
        """The logical shape of an array."""
        return tuple(self._s.info(_check_name(name))[1])

    # -- writes -----------------------------------------------------------------------------

    @_os_errors
    def save(
        self,
        arrays: Mapping,
        compress: bool = False,
        compression_level: int | None = None,
        block_rows: int | None = None,
    ) -> None:
        """Create or overwrite whole arrays, all in one atomic step.

        With `compress=True` each array is stored as independently zstd-compressed blocks of
        `block_rows` rows (default: about 1 MiB of raw data a block) at `compression_level`
        (default 3), which reads, gathers and writes still reach block by block.
        """
        level = _compression(compress, compression_level, block_rows)
        items = []
        for name, arr in _check_arrays(arrays, "save").items():
            a = _dtypes.to_disk(arr, name)
            items.append((name, a.dtype.str, a.shape, as_bytes(a)))
        self._s.save(items, level, block_rows)

    @_os_errors
    def append(self, arrays: Mapping) -> None:
        """Add rows at the end of arrays, in place; an array that does not exist is created."""
        items = []
        names = set(self._s.names())
        for name, arr in _check_arrays(arrays, "append").items():
            if name in names:
                dtype, shape, _ = self._s.info(name)
                a = _dtypes.cast_rows(arr, np.dtype(dtype), shape[1:], name)
            else:
                a = _dtypes.to_disk(arr, name)
            items.append((name, a.dtype.str, a.shape, as_bytes(a)))
        self._s.append(items)

    @_os_errors
    def replace(self, arrays: Mapping, indexes) -> None:
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

    @_os_errors
    def drop(self, name, indexes=None) -> None:
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

    @_os_errors
    def compact(self, name=None) -> None:
        """Reclaim the space of dropped rows (of one array, a list, or all of them)."""
        self._s.compact(None if name is None else _names(name))

    @_os_errors
    def reset(self) -> None:
        """Remove every array."""
        self._s.reset()

    # -- reads ------------------------------------------------------------------------------

    @_os_errors
    def load(self, name: str, lazy: bool = False):
        """The whole array: an ndarray that owns its memory, or a LazyArray (nothing read yet)."""
        lz = LazyArray(self._s.view(_check_name(name)), self._path, name, self.backend)
        return lz if lazy else lz.to_numpy()

    @_os_errors
    def getitem(self, name: str, indexes) -> np.ndarray:
        """Rows of an array, gathered in the order of `indexes` (an int drops the first axis)."""
        return LazyArray(self._s.view(_check_name(name)), self._path, name, self.backend).rows(
            indexes
        )

    @_os_errors
    def stream_load(self, name: str, buffer_size: int = 1000) -> StreamLoader:
        """Iterate over an array in batches of `buffer_size` rows (`len()` gives the count)."""
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, (int, np.integer)):
            raise InvalidTypeError("buffer_size must be an int")
        if buffer_size < 1:
            raise InvalidArgumentError(f"buffer_size must be at least 1, got {buffer_size}")
        view = self._s.view(_check_name(name))
        return StreamLoader(LazyArray(view, self._path, name, self.backend), int(buffer_size))

    @_os_errors
    def get_shape(self, name: str | None = None):
        """The shape of one array, or {name: shape} of all."""
        if name is None:
            return {e[0]: tuple(e[2]) for e in self._s.entries()}
        return self._shape(name)

    @_os_errors
    def get_member_list(self) -> list:
        return list(self._s.names())

    @_os_errors
    def get_modify_time(self, name: str) -> int:
        """When the array last changed, in microseconds since the epoch."""
        return self._s.info(_check_name(name))[2]

    @_os_errors
    def get_metadata(self) -> dict:
        """A plain dict describing the store and each array."""
        arrays = {}
        for name, dtype, shape, dropped, modified, file, disk, comp in self._s.entries():
            dt = _dtypes.native(dtype)
            arrays[name] = {
                "dtype": str(dt),
                "shape": tuple(shape),
                "nbytes": int(np.prod(shape, dtype=np.int64)) * dt.itemsize,
                "rows_dropped": dropped,
                "bytes_on_disk": disk,
                "modified_us": modified,
                "file": file,
                "compression": comp,
            }
        return {"path": self._path, "backend": self.backend, "format_version": 1, "arrays": arrays}

    @_os_errors
    def has_array(self, name: str) -> bool:
        return _check_name(name) in self._s.names()

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and self.has_array(name)

    def __len__(self) -> int:
        return len(self.get_member_list())

    def __iter__(self) -> Iterator[str]:
        return iter(self.get_member_list())

    def __getitem__(self, name: str) -> np.ndarray:
        return self.load(name)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release the store's files; further calls raise StoreClosedError. Idempotent."""
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def __enter__(self) -> NumPack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._store is None:
            return f"NumPack({self._path!r}, closed)"
        shapes = ", ".join(f"{n}: {s}" for n, s in self.get_shape().items())
        return f"NumPack({self._path!r}, backend={self.backend!r}, arrays={{{shapes}}})"


class StreamLoader:
    """Batches of rows of one array; has a length, so progress bars can show a total."""

    def __init__(self, lazy: LazyArray, batch: int):
        self._lazy, self._batch = lazy, batch

    def __len__(self) -> int:
        return -(-len(self._lazy) // self._batch)

    def __iter__(self) -> Iterator[np.ndarray]:
        n, b = len(self._lazy), self._batch
        for start in range(0, n, b):
            yield self._lazy.rows(slice(start, start + b))


__all__ = ["NumPack", "StreamLoader"]
