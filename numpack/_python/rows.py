"""Logical rows (what a user indexes) to physical rows (where they sit in the file)."""

from __future__ import annotations

import numpy as np


class RowMap:
    """Maps logical rows to physical rows, given an array's dropped rows (FORMAT.md 4)."""

    def __init__(self, deleted: np.ndarray):
        # With D the dropped rows, D[j] - j live rows precede dropped row j; logical row i is
        # physical row i + #{j : D[j] - j <= i}. D[j] - j is non-decreasing, so a binary search
        # counts them.
        self._shifted = deleted - np.arange(len(deleted), dtype=np.int64)

    def physical(self, rows: np.ndarray) -> np.ndarray:
        if not len(self._shifted):
            return rows
        return rows + np.searchsorted(self._shifted, rows, side="right")


def last_occurrences(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct `rows`, ascending, and where each occurs last in `rows`.

    Writing only those keeps NumPy's rule for a repeated index: the last value given wins.
    """
    distinct, first_from_end = np.unique(rows[::-1], return_index=True)
    return distinct, len(rows) - 1 - first_from_end


def runs(dst: np.ndarray, src: np.ndarray):
    """Split paired indexes into runs where both go up by one: `(dst, src, length)` each,
    so consecutive rows are copied or written in one piece."""
    if not len(dst):
        return []
    cut = np.flatnonzero((np.diff(dst) != 1) | (np.diff(src) != 1)) + 1
    starts = np.concatenate(([0], cut))
    lengths = np.diff(np.concatenate((starts, [len(dst)])))
    return zip(dst[starts].tolist(), src[starts].tolist(), lengths.tolist())
