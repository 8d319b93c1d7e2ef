"""Backend choice and the interface both backends implement.

A backend module exposes `Store(path: str, lock_timeout: float)` with these methods. Names and
dtypes arrive validated; row indexes arrive as 1-D int64 arrays of in-range logical rows; data
arrives as the C-contiguous little-endian bytes of the rows, as a 1-D uint8 array. The store
re-checks under its lock what another process could have changed since (existence, dtype, row
shape, row count) and raises the classes of `numpack._errors`.

    close()
    names() -> list[str]                               arrays in creation order
    info(name) -> (dtype: str, shape: tuple, modified_us: int)      logical shape
    entries() -> list[(name, dtype, shape, dropped, modified_us, file, bytes_on_disk,
                       compression)]
                         compression: None for raw arrays, else a dict: codec, level,
                         block_rows, blocks, filters ({filter name: block count}; names
                         "raw", "none", "shuffle", "delta+shuffle"), raw_bytes, stored_bytes
    save(items, level, block_rows)
                         items: list of (name, dtype, shape, data); one commit; level None:
                         raw arrays, else zstd level (FORMAT.md 7); block_rows None: default
    append(items)        same items; creates missing arrays (raw); appends to compressed
                         arrays compressed; one commit
    replace(items)       items: list of (name, rows, data); one commit
    drop_arrays(names)
    drop_rows(name, rows)
    compact(names | None)                              None: every array, and sweep garbage
    reset()
    view(name) -> View   a snapshot of one array: later calls do not change what it maps

    View.dtype: str, View.shape: tuple (logical), View.dropped: int
    View.read(start, stop, out)    logical rows [start, stop) into `out` (uint8, exact size)
    View.gather(rows, out)         logical rows into `out`, in the order given
    View.buffer()                  read-only buffer over the rows, zero-copy; None if the
                                   array is compressed, has dropped rows or no rows
"""

from __future__ import annotations

import os

from ._errors import InvalidArgumentError

BACKENDS = ("rust", "python")


def load(name: str | None):
    """The backend module for `name` (None: $NUMPACK_BACKEND, else rust if it imports)."""
    if name is None:
        name = os.environ.get("NUMPACK_BACKEND") or None
    if name is None:
        try:
            from . import _core
        except ImportError:
            from ._python import store as _py

            return "python", _py
        return "rust", _core
    if name == "rust":
        from . import _core

        return "rust", _core
    if name == "python":
        from ._python import store as _py

        return "python", _py
    raise InvalidArgumentError(f"unknown backend {name!r}; choose one of {BACKENDS}")
