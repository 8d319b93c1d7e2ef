"""Row indexes as NumPy reads them: int, slice, list, integer array or boolean mask."""

from __future__ import annotations

import operator

import numpy as np

from ._errors import InvalidTypeError, RowIndexError

_INDEX_TYPES = "an int, a slice, a list of ints, an integer array or a boolean mask"


def rows(index, n: int, name: str) -> tuple[np.ndarray | slice, bool]:
    """Normalise `index` against `n` rows.

    Returns `(sel, scalar)`: `sel` is either a slice with step 1 and resolved non-negative bounds
    (read as one run) or an int64 array of non-negative row numbers below `n`; `scalar` is True
    when `index` was a single int (NumPy then drops the first axis).
    """
    if isinstance(index, slice):
        start, stop, step = index.indices(n)
        if step == 1:
            return slice(start, max(start, stop)), False
        return np.arange(start, stop, step, dtype=np.int64), False
    if isinstance(index, (bool, np.bool_)):
        raise InvalidTypeError(f"array {name!r}: a bool is not a row index; use a boolean mask")
    if isinstance(index, (int, np.integer)):
        i = int(index)
        if not -n <= i < n:
            raise RowIndexError(f"array {name!r}: index {i} is out of bounds for {n} rows")
        return np.array([i + n if i < 0 else i], dtype=np.int64), True
    if hasattr(index, "__index__") and not isinstance(index, np.ndarray):
        return rows(operator.index(index), n, name)
    arr = np.asarray(index)
    if arr.dtype == np.bool_:
        if arr.ndim != 1 or arr.shape[0] != n:
            raise RowIndexError(
                f"array {name!r}: boolean mask of shape {arr.shape} does not match {n} rows"
            )
        return np.flatnonzero(arr).astype(np.int64, copy=False), False
    if arr.size == 0 and arr.dtype.kind not in "iu":
        arr = arr.astype(np.int64)  # [] is an empty selection, as in NumPy
    if arr.dtype.kind not in "iu":
        raise InvalidTypeError(
            f"array {name!r}: row indexes must be {_INDEX_TYPES}, got {arr.dtype}"
        )
    if arr.ndim != 1:
        raise InvalidTypeError(
            f"array {name!r}: row indexes must be one-dimensional, got shape {arr.shape}"
        )
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise RowIndexError(f"array {name!r}: index {arr.max()} is out of bounds for {n} rows")
    sel = arr.astype(np.int64, copy=True)
    if sel.size:
        lo, hi = int(sel.min()), int(sel.max())
        if lo < -n or hi >= n:
            bad = lo if lo < -n else hi
            raise RowIndexError(f"array {name!r}: index {bad} is out of bounds for {n} rows")
        if lo < 0:
            sel[sel < 0] += n
    return sel, False


def count(sel: np.ndarray | slice) -> int:
    return sel.stop - sel.start if isinstance(sel, slice) else len(sel)
