"""Backend choice, and the interface both backends implement (checked by mypy: see the end).

A backend module exposes `Store(path, lock_timeout, durable)`, a `StoreBackend`. Names and
dtypes arrive validated; row indexes arrive as 1-D int64 arrays of in-range logical rows; data
arrives as the C-contiguous little-endian bytes of the rows, as a 1-D uint8 array. The store
re-checks under its lock what another process could have changed since (existence, dtype, row
shape, row count) and raises the classes of `numpack._errors`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from ._errors import InvalidArgumentError

BACKENDS = ("rust", "python")

Bytes = npt.NDArray[np.uint8]
Rows = npt.NDArray[np.int64]
# (name, dtype, shape, data): a whole array to save, or rows to append.
Item = tuple[str, str, Sequence[int], Bytes]


class Entry(NamedTuple):
    """One array as `StoreBackend.entries()` reports it."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # logical
    dropped: int
    modified_us: int
    file: str
    bytes_on_disk: int
    # None for raw arrays, else: codec, level, block_rows, blocks, filters ({filter name: block
    # count}; "raw", "none", "shuffle", "delta+shuffle", ...), raw_bytes, stored_bytes.
    compression: dict[str, Any] | None


class ViewBackend(Protocol):
    """A snapshot of one array: later calls do not change what it maps."""

    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...  # logical
    @property
    def dropped(self) -> int: ...
    def read(self, start: int, stop: int, out: Bytes) -> None:
        """Logical rows [start, stop) into `out` (uint8, exact size)."""

    def gather(self, rows: Rows, out: Bytes) -> None:
        """Logical rows into `out`, in the order given."""

    def buffer(self) -> Any:
        """A read-only buffer over the rows, zero-copy; None if the array is compressed, has
        dropped rows or no rows."""


class StoreBackend(Protocol):
    """One store directory (spec/FORMAT.md). Each writing call is one commit, or part of the
    transaction between `begin()` and `commit()` / `abort()`."""

    def close(self) -> None: ...
    def names(self) -> list[str]:
        """Arrays in creation order."""

    def info(self, name: str) -> tuple[str, tuple[int, ...], int]:
        """(dtype, logical shape, modified_us)."""

    def entries(self) -> Sequence[tuple[Any, ...]]:
        """The fields of an `Entry` per array, in order."""

    def save(self, items: list[Item], level: int | None, block_rows: int | None) -> None:
        """Whole arrays: raw (level None) or zstd at `level` (FORMAT.md 7)."""

    def append(self, items: list[Item]) -> None:
        """Rows at the end; creates missing arrays (raw)."""

    def replace(self, items: list[tuple[str, Rows, Bytes]]) -> None: ...
    def drop_arrays(self, names: list[str]) -> None: ...
    def drop_rows(self, name: str, rows: Rows) -> None: ...
    def compact(self, names: list[str] | None) -> None:
        """None: every array, and garbage files swept."""

    def reset(self) -> None: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def format_version(self) -> int: ...
    def snapshot(self) -> bytes:
        """The metadata as one snapshot (spec/FORMAT.md 2), the log folded in."""

    def view(self, name: str) -> ViewBackend: ...


class Backend(Protocol):
    def Store(self, path: str, lock_timeout: float, durable: bool = ...) -> StoreBackend: ...


def load(name: str | None) -> tuple[str, Any]:
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


if TYPE_CHECKING:  # mypy proves both backends implement the contract
    from . import _core
    from ._python import store as _py

    _rust: type[StoreBackend] = _core.Store
    _python: type[StoreBackend] = _py.Store
    _rust_view: type[ViewBackend] = _core.View
    _python_view: type[ViewBackend] = _py.View
