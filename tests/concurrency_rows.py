"""Rows that prove themselves whole, shared by tests/test_concurrency.py and its subprocesses.

Each row of int64 holds: writer, sequence id, 10 payload values, checksum of the rest. 104 bytes,
so rows straddle page edges; a torn row (half of one version, half of another) fails its
checksum.
"""

from __future__ import annotations

import numpy as np

COLS = 13
_K = np.random.default_rng(12345).integers(1, 2**62, COLS - 1, dtype=np.uint64) | np.uint64(1)


def checksum(rows: np.ndarray) -> np.ndarray:
    return (rows[..., :-1].view(np.uint64) * _K).sum(axis=-1).view(np.int64)


def make_rows(writer: int, seqs) -> np.ndarray:
    """Rows of `writer` with sequence ids `seqs`; the same arguments give the same rows."""
    seqs = np.atleast_1d(np.asarray(seqs, dtype=np.int64))
    rng = np.random.default_rng([writer + 1, int(seqs[0]) + 1])
    rows = rng.integers(-(2**62), 2**62, (len(seqs), COLS), dtype=np.int64)
    rows[:, 0], rows[:, 1] = writer, seqs
    rows[:, -1] = checksum(rows)
    return rows


def check_rows(rows, what: str) -> None:
    rows = np.asarray(rows).reshape(-1, COLS)
    bad = np.flatnonzero(checksum(rows) != rows[:, -1])
    assert not len(bad), f"{what}: torn rows {bad[:5].tolist()} of {len(rows)}"
