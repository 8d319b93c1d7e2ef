"""LazyArray: a read-only array backed by a store's file, read only when indexed."""

from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex, Union, overload

import numpy as np
import numpy.typing as npt

from . import _dtypes, _indexing, _repr
from ._compat07 import LazyArray07
from ._errors import InvalidTypeError, RowIndexError

if TYPE_CHECKING:
    from types import EllipsisType

# What selects rows: an int (the first axis is dropped), a slice, a list of ints, an integer
# array or a boolean mask.
RowIndex = Union[
    SupportsIndex, slice, Sequence[int], npt.NDArray[np.integer[Any]], npt.NDArray[np.bool_]
]
# The row indexes that always select an array of rows (an int selects one row, which for a 1-D
# array is a scalar). Like NumPy's own annotations, the overloads below give an ndarray for
# these and Any for the rest.
RowsIndex = Union[slice, list[int], npt.NDArray[np.integer[Any]], npt.NDArray[np.bool_]]


def as_bytes(arr: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array as a 1-D uint8 array (no copy)."""
    return arr.reshape(-1).view(np.uint8)


def _reopen(path: str, name: str, backend: str) -> LazyArray:
    from ._store import NumPack

    with NumPack(path, backend=backend) as npk:
        return npk.load(name, lazy=True)


class LazyArray(LazyArray07):
    """An array in a NumPack store that has not been read yet.

    Indexing follows NumPy's rules and reads only the rows it selects, into a new ndarray.
    `np.asarray(lazy)` maps the file without reading it (zero-copy) when the array has no
    dropped rows; otherwise it reads the live rows into memory.

    A LazyArray is a snapshot of the rows the array had when it was made: rows replaced in
    place afterwards show their new values; rows appended or dropped afterwards, and arrays
    saved over or dropped afterwards, do not change what it shows (it keeps the old file).

    NumPack 0.7's LazyArray methods come from `LazyArray07`: NumPy's operators (returning
    ndarrays), `copy()`, `close()` and `with lazy:`, and its gather helpers.
    """

    def __init__(
        self,
        view: Any,
        path: str,
        name: str,
        backend: str,
        compression: dict[str, Any] | None = None,
    ) -> None:
        self._view = view
        self._path, self._name, self._backend = path, name, backend
        # The array's compression facts (an entry of Store.entries()), None for a raw array;
        # only the reprs use them.
        self._compression = compression
        self.dtype: np.dtype[Any] = _dtypes.native(view.dtype)
        self.shape: tuple[int, ...] = tuple(view.shape)

    # -- array attributes ---------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def T(self) -> np.ndarray:
        return np.asarray(self).T

    def __len__(self) -> int:
        return self.shape[0]

    # -- reading ------------------------------------------------------------------------

    def _mapped(self) -> np.ndarray | None:
        """The whole array as a read-only view of the mapping, or None when impossible."""
        buf = self._view.buffer()
        if buf is None:
            return None
        return np.frombuffer(buf, dtype=self.dtype).reshape(self.shape)

    def _read(self, sel) -> np.ndarray:
        out = np.empty((_indexing.count(sel),) + self.shape[1:], dtype=self.dtype)
        if out.size:
            if isinstance(sel, slice):
                self._view.read(sel.start, sel.stop, as_bytes(out))
            else:
                self._view.gather(sel, as_bytes(out))
        return out

    @overload
    def rows(self, index: RowsIndex) -> npt.NDArray[Any]: ...
    @overload
    def rows(self, index: SupportsIndex | Sequence[int]) -> Any: ...
    def rows(self, index: RowIndex) -> Any:
        """Rows selected by a row index (int, slice, list, int array, mask), read into memory."""
        sel, scalar = _indexing.rows(index, self.shape[0], self._name)
        out = self._read(sel)
        return out[0] if scalar else out

    @overload
    def __getitem__(self, key: RowsIndex) -> npt.NDArray[Any]: ...
    @overload
    def __getitem__(self, key: SupportsIndex | tuple[Any, ...] | EllipsisType | None) -> Any: ...
    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        pos, first = _first_axis(key, self.ndim)
        if pos is None or _is_basic(first):
            mapped = self._mapped()
            if mapped is not None:  # NumPy indexes the mapping; copy out what it selects
                result = _numpy_index(mapped, key, self._name)
                # Views of the read-only mapping are the only read-only results.
                if isinstance(result, np.ndarray) and not result.flags.writeable:
                    result = result.copy()
                return result
            if pos is None:
                return _numpy_index(self.to_numpy(), key, self._name)
        return self._index_rows(first, key, pos)

    def _index_rows(self, first, key: tuple, pos: int) -> np.ndarray:
        """Reads the rows that axis 0 selects, then applies `key` to them with axis 0 remapped
        onto the rows read, which keeps every NumPy rule for how index arrays combine."""
        if _is_basic(first):
            sel, _ = _indexing.rows(first, self.shape[0], self._name)
            inner = slice(None) if isinstance(first, slice) else 0
            rows = self._read(sel)
        else:
            arr = np.asarray(first)
            if arr.dtype == np.bool_ and arr.ndim > 1:
                # A mask over several leading axes means its nonzero() arrays, one per axis.
                if arr.shape != self.shape[: arr.ndim]:
                    raise RowIndexError(
                        f"array {self._name!r}: boolean index of shape {arr.shape} does not "
                        f"match the array's shape {self.shape}"
                    )
                nz = np.nonzero(arr)
                return self._index_rows(nz[0], key[:pos] + nz + key[pos + 1 :], pos)
            flat, _ = _indexing.rows(
                arr if arr.ndim == 1 else arr.reshape(-1), self.shape[0], self._name
            )
            rows = self._read(flat)
            inner = (
                np.arange(len(flat)).reshape(arr.shape)
                if arr.dtype != np.bool_
                else np.arange(len(flat))
            )
        rest = key[:pos] + (inner,) + key[pos + 1 :]
        if all(isinstance(k, slice) and k == slice(None) for k in rest):
            return rows
        return _numpy_index(rows, rest, self._name)

    def to_numpy(self) -> np.ndarray:
        """The whole array, read into memory that the result owns."""
        return self._read(slice(0, self.shape[0]))

    @property
    def __array_interface__(self) -> dict:
        # NumPy prefers this to __array__ and reads the mapping through it without a copy
        # (some functions, np.inner among them, would otherwise ask __array__ for a copy).
        mapped = self._mapped()
        if mapped is None:
            raise AttributeError("__array_interface__: dropped rows leave no single mapping")
        return mapped.__array_interface__

    def __array__(
        self, dtype: npt.DTypeLike | None = None, copy: bool | None = None
    ) -> npt.NDArray[Any]:
        arr = self._mapped() if copy is not True else None
        if arr is None:
            if copy is False:
                raise ValueError(
                    f"array {self._name!r} has dropped rows, so it cannot be mapped without a copy"
                )
            arr = self.to_numpy()
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            if copy is False:
                raise ValueError("a dtype change needs a copy, and copy=False forbids it")
            arr = arr.astype(dtype)
        return arr

    def to_dask(self, chunks: Any = None) -> Any:
        """This array as a dask array whose tasks reopen the store by path wherever they run
        (see `numpack.io.to_dask`; needs dask: `pip install 'numpack[dask]'`)."""
        from .io._dask import from_lazy

        return from_lazy(self, chunks)

    def reshape(self, *shape: Any, order: Literal["C", "F", "A"] = "C") -> npt.NDArray[Any]:
        """`np.asarray(self).reshape(...)`: a view of the mapping when one is possible."""
        return np.asarray(self).reshape(*shape, order=order)

    def top_k(
        self, queries: npt.ArrayLike, k: int, metric: str = "dot"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k search of this array's rows: `numpack.top_k(queries, self, k, metric)`."""
        from ._search import top_k  # _search imports this module

        return top_k(queries, self, k, metric)

    def __matmul__(self, other: npt.ArrayLike) -> Any:
        return np.asarray(self) @ other

    def __rmatmul__(self, other: npt.ArrayLike) -> Any:
        return other @ np.asarray(self)

    def __iter__(self) -> Iterator[Any]:
        step = max(1, (1 << 22) // max(1, self.nbytes // max(1, len(self))))
        for start in range(0, len(self), step):
            yield from self._read(slice(start, min(start + step, len(self))))

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:
        return _reopen, (self._path, self._name, self._backend)

    def __repr__(self) -> str:
        return _repr.lazy_repr(self)

    def _repr_html_(self) -> str:
        """Shape, dtype, compression, source, and the first and last rows (only those read)."""
        if self.closed:  # no rows to preview
            return f"<pre>{html.escape(repr(self))} (closed)</pre>"
        return _repr.lazy_html(self)


def _is_basic(index) -> bool:
    """Whether an index is a slice or an integer (not an array, list, mask or bool)."""
    return isinstance(index, slice) or (
        isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_))
    )


def _first_axis(key: tuple, ndim: int) -> tuple[int | None, object]:
    """The position in `key` of the index that applies to axis 0, and that index; None when
    an Ellipsis covers axis 0 or nothing indexes it."""
    for i, k in enumerate(key):
        if k is None:
            continue
        if k is Ellipsis:
            consumed = sum(
                np.ndim(x) if isinstance(x, np.ndarray) and x.dtype == np.bool_ else 1
                for x in key
                if x is not None and x is not Ellipsis
            )
            if ndim > consumed:
                return None, None
            continue
        return i, k
    return None, None


def _numpy_index(arr: np.ndarray, key, name: str) -> np.ndarray:
    """`arr[key]`, with NumPy's errors turned into numpack's."""
    try:
        return arr[key]
    except IndexError as e:
        raise RowIndexError(f"array {name!r}: {e}") from None
    except TypeError as e:
        raise InvalidTypeError(f"array {name!r}: {e}") from None
