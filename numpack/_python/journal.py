"""Putting back old rows: of undo records (FORMAT.md 6), and of the undo journal of version 1
stores, numpack.undo (FORMAT.md 9), which a version 2 writer recovers before it upgrades.

The journal's layout, integers little-endian uint64: magic "NPKUNDO1", then per changed file
`len(file) | file | R | n | n physical rows | n rows of R bytes (their old contents)`.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from .._errors import CorruptStoreError
from . import files
from .naming import is_data_file
from .rows import runs

NAME = "numpack.undo"
_MAGIC = b"NPKUNDO1"


def recover(directory: str, path: str, durable: bool = False) -> bool:
    """Undo an interrupted version 1 `replace`, if a journal is there: put the old rows back,
    then delete the journal. Called holding the write lock. Returns whether there was one."""
    journal = os.path.join(directory, NAME)
    try:
        with open(journal, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    what = f"{path}: the undo journal {NAME}"
    for file, row_bytes, physical, old in _parse(data, what):
        restore(directory, file, row_bytes, physical, old, what, durable)
    os.unlink(journal)
    return True


def restore(directory: str, file: str, row_bytes: int, rows, old, what: str, durable: bool):
    """Write `old`, the old contents of physical `rows` of `file`, back: last row first, so
    that for a row listed twice the oldest contents win. A file that is gone is skipped (its
    rows went with it); rows past its end are CorruptStoreError naming `what`."""
    rows = np.asarray(rows, np.uint64)
    if not len(rows) or not row_bytes:
        return
    try:
        fd = os.open(os.path.join(directory, file), os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        # The rows were read from inside the file; a record that says otherwise is damaged.
        # (Python ints: the product cannot overflow.)
        if (int(rows.max()) + 1) * row_bytes > os.fstat(fd).st_size:
            raise CorruptStoreError(f"{what} names rows past the end of {file}")
        old = memoryview(old).cast("B")
        for p, k, n in _writes(rows.astype(np.int64)):
            files.write_all(fd, old[k * row_bytes : (k + n) * row_bytes], p * row_bytes)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _writes(rows: np.ndarray):
    """`(row, k, n)`: write the old rows k..k+n over rows row..row+n, in an order that gives
    the oldest contents of a row listed twice. Rows listed once (what a writer logs) are put
    back a run of consecutive rows at a time."""
    order = np.argsort(rows, kind="stable")
    if np.all(np.diff(rows[order]) > 0):
        return runs(rows[order], order)
    return [(r, k, 1) for k, r in reversed(list(enumerate(rows.tolist())))]


def _parse(data: bytes, what: str) -> list:
    view = memoryview(data)
    pos = len(_MAGIC)
    if bytes(view[:pos]) != _MAGIC:
        raise CorruptStoreError(f"{what} does not start with {_MAGIC.decode()}")

    def take(n: int) -> memoryview:
        nonlocal pos
        if n > len(view) - pos:
            raise CorruptStoreError(f"{what} is truncated")
        pos += n
        return view[pos - n : pos]

    def u64() -> int:
        return struct.unpack("<Q", take(8))[0]

    sections = []
    while pos < len(view):
        try:
            file = bytes(take(u64())).decode("utf-8")
        except UnicodeDecodeError:
            file = ""
        if not is_data_file(file):
            raise CorruptStoreError(f"{what} names no data file ({file!r})")
        row_bytes, n = u64(), u64()
        physical = np.frombuffer(take(8 * n), "<u8")
        sections.append((file, row_bytes, physical, take(n * row_bytes)))
    return sections
