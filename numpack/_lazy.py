"""LazyArray: a read-only array backed by a store's file, read only when indexed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import _dtypes, _indexing


def as_bytes(arr: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array as a 1-D uint8 array (no copy)."""
    return arr.reshape(-1).view(np.uint8)


class LazyArray:
    """An array in a NumPack store that has not been read yet.

    Indexing reads just the rows it selects into a new ndarray. `np.asarray(lazy)` maps the file
    without reading it (zero-copy) when the array has no dropped rows; otherwise it reads the
    live rows. A LazyArray is a snapshot of the array's rows when it was made: later appends and
    drops do not show; rows replaced in place do.
    """

    def __init__(self, view, path: str, name: str, backend: str):
        self._view = view
        self._path, self._name, self._backend = path, name, backend
        self.dtype = _dtypes.native(view.dtype)
        self.shape = tuple(view.shape)

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

    def __len__(self) -> int:
        return self.shape[0]

    # -- reading ------------------------------------------------------------------------

    def _read(self, sel) -> np.ndarray:
        out = np.empty((_indexing.count(sel),) + self.shape[1:], dtype=self.dtype)
        if out.size:
            if isinstance(sel, slice):
                self._view.read(sel.start, sel.stop, as_bytes(out))
            else:
                self._view.gather(sel, as_bytes(out))
        return out

    def __getitem__(self, key) -> np.ndarray:
        rest = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        sel, scalar = _indexing.rows(key, self.shape[0], self._name)
        out = self._read(sel)
        if scalar:
            out = out[0]
        return out[(slice(None),) * (not scalar) + rest] if rest else out

    def to_numpy(self) -> np.ndarray:
        """The whole array, read into memory that the result owns."""
        return self._read(slice(0, self.shape[0]))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        buf = self._view.buffer() if copy is not True else None
        if buf is not None:
            arr = np.frombuffer(buf, dtype=self.dtype).reshape(self.shape)
        else:
            arr = self.to_numpy()
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            if copy is False:
                raise ValueError("a dtype change needs a copy, and copy=False forbids it")
            arr = arr.astype(dtype)
        return arr

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self), 1024):
            yield from self[start : start + 1024]

    def __repr__(self) -> str:
        return (f"LazyArray(name={self._name!r}, shape={self.shape}, dtype={self.dtype}, "
                f"path={self._path!r}, backend={self._backend!r})")
