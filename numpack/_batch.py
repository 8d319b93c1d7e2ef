"""NumPack 0.7's batch modes, on numpack's transactions.

`batch_mode()` keeps the arrays loaded and saved inside it in memory and writes the saved ones
at its end; `writable_batch_mode()` hands out writable memory maps of raw arrays. Both are
transactions: other processes see all of their writes at the end, or none.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from . import _dtypes
from ._errors import InvalidArgumentError, InvalidTypeError, os_errors

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._store import NumPack

_NO_ROWS = np.zeros(0, np.int64)
_NO_BYTES = np.zeros(0, np.uint8)


class _TransactionBlock:
    """A `with` block that is one transaction of its NumPack: `_finish()` runs inside it at the
    end of a block that raised nothing, `_leave()` always; an exception from either, or from
    the block, undoes the transaction."""

    def __init__(self, numpack_instance: NumPack) -> None:
        self._npk = numpack_instance
        self._txn: Any = None

    def _enter(self) -> None:
        self._txn = self._npk.transaction()
        self._txn.__enter__()

    def _finish(self) -> None:
        pass

    def _leave(self) -> None:
        pass

    def __exit__(self, *exc: Any) -> bool:
        try:
            if exc[0] is None:
                self._finish()
        except BaseException as e:
            self._leave()
            self._txn.__exit__(type(e), e, e.__traceback__)
            raise
        self._leave()
        self._txn.__exit__(*exc)
        return False


class BatchModeContext(_TransactionBlock):
    """`with npk.batch_mode(memory_limit=None):` — a transaction that caches arrays.

    Inside it `npk.load(name)` returns the cached array (loading it once), and `npk.save(...)`
    (without compression) only updates the cache; the saved arrays are written at the end, in
    the same commit as every other call made inside. Any other call on `npk` first writes the
    saved arrays (inside the transaction) and empties the cache, so it sees them. An exception
    leaves the store as it was. `memory_limit` (MB, a soft limit): when the cache holds more,
    the saved arrays are written early (still inside the transaction).
    """

    def __init__(self, numpack_instance: NumPack, memory_limit: float | None = None) -> None:
        if memory_limit is not None and (
            isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, float))
        ):
            raise InvalidTypeError(f"memory_limit must be a number of MB, got {memory_limit!r}")
        super().__init__(numpack_instance)
        self._limit = None if memory_limit is None else memory_limit * 2**20
        self._cache: dict[str, np.ndarray] = {}
        self._dirty: dict[str, None] = {}  # names saved, in order
        self._flushing = False

    def __enter__(self) -> BatchModeContext:
        if self._npk._batch is not None:
            raise InvalidArgumentError("a batch mode is already active on this NumPack")
        self._enter()
        self._npk._batch = self
        return self

    def _finish(self) -> None:
        self.flush()

    def _leave(self) -> None:
        self._npk._batch = None

    def load(self, name: str) -> np.ndarray:
        arr = self._cache.get(name)
        if arr is None:
            arr = self._npk._load_eager(name)
            self._cache[name] = arr
        return arr

    def save(self, arrays: Mapping[str, npt.ArrayLike]) -> None:
        for name, arr in arrays.items():
            a = np.asarray(arr)
            _dtypes.disk_dtype(a.dtype, name)  # a dtype numpack cannot store fails now
            self._cache[name] = a
            self._dirty[name] = None
        if self._limit is not None and sum(a.nbytes for a in self._cache.values()) > self._limit:
            self.flush()

    def flush(self) -> None:
        """Write the saved arrays (inside the transaction)."""
        if not self._dirty or self._flushing:
            return
        self._flushing = True
        try:
            self._npk.save({n: self._cache[n] for n in self._dirty if n in self._cache})
            self._dirty.clear()
        finally:
            self._flushing = False

    def settle(self) -> None:
        """Before any other call: the saved arrays written, the cache emptied."""
        if self._flushing:
            return
        self.flush()
        self._cache.clear()

    @property
    def flushing(self) -> bool:
        return self._flushing


class WritableBatchMode(_TransactionBlock):
    """`with npk.writable_batch_mode() as wb:` — writable memory maps of raw arrays.

    `wb.load(name)` returns an `np.memmap` (mode "r+") of the array's data file: assignments
    go straight to the file, at np.memmap's speed. The block is a transaction holding the write
    lock; at its end the maps are flushed (msync, only with `durable=True`) and each array
    loaded gets a new modified time, in one commit. Writes through a map are **not** atomic,
    as with np.memmap: they are visible to readers at once and an exception does not undo
    them. Arrays with dropped rows are compacted first; compressed arrays cannot be mapped
    (use `batch_mode`). `wb.save(arrays)` is a no-op for the maps themselves (as in NumPack
    0.7) and saves any other array inside the transaction.
    """

    def __init__(self, numpack_instance: NumPack) -> None:
        super().__init__(numpack_instance)
        self._maps: dict[str, np.ndarray] = {}

    def __enter__(self) -> WritableBatchMode:
        self._enter()
        return self

    def _leave(self) -> None:
        self._maps = {}

    @os_errors
    def _finish(self) -> None:
        store = self._npk._s
        for name, arr in self._maps.items():
            if isinstance(arr, np.memmap) and self._npk._durable:
                arr.flush()
            # A replace of no rows records only the new modified time.
            store.replace([(name, _NO_ROWS, _NO_BYTES)])

    @os_errors
    def load(self, array_name: str) -> np.ndarray:
        """A writable memory map of the raw array `array_name` (C order, its shape)."""
        arr = self._maps.get(array_name)
        if arr is not None:
            return arr
        info = self._npk.get_metadata()["arrays"].get(array_name)
        if info is None:
            self._npk._s.info(array_name)  # raises ArrayNotFoundError
        assert info is not None
        if info["compression"] is not None:
            raise InvalidArgumentError(
                f"array {array_name!r} is compressed: writable_batch_mode maps raw arrays only "
                "(use batch_mode, or save it without compression)"
            )
        if info["rows_dropped"]:
            self._npk.compact(array_name)
            info = self._npk.get_metadata()["arrays"][array_name]
        dtype = np.dtype(self._npk._s.info(array_name)[0])
        shape = tuple(info["shape"])
        if info["nbytes"] == 0:
            arr = np.zeros(shape, dtype)  # nothing to map: a zero-length mapping is refused
        else:
            path = os.path.join(self._npk.path, info["file"])
            arr = np.memmap(path, dtype=dtype, mode="r+", shape=shape)
        self._maps[array_name] = arr
        return arr

    def save(self, arrays_dict: Mapping[str, npt.ArrayLike]) -> None:
        """Nothing for the maps `load` gave (their writes are already in the file); any other
        array is saved, inside the transaction, and its old map dropped."""
        for name, arr in arrays_dict.items():
            mapped = self._maps.get(name)
            if mapped is not None and np.shares_memory(np.asarray(arr), mapped):
                continue
            self._npk.save({name: arr})
            self._maps.pop(name, None)
