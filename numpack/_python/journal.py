"""The undo journal, numpack.undo, that makes an in-place `replace` atomic (FORMAT.md 6).

Layout, integers little-endian uint64: magic "NPKUNDO1", then per changed file
`len(file) | file | R | n | n physical rows | n rows of R bytes (their old contents)`.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from .._errors import CorruptStoreError
from . import files
from .naming import is_data_file

NAME = "numpack.undo"
_MAGIC = b"NPKUNDO1"


def write(directory: str, sections, durable: bool = False) -> None:
    """Write the journal of `sections`, each `(file, R, physical rows, old rows)`.

    It is written under a temporary name and renamed, so a journal that exists is whole; with
    `durable` it is on disk before the caller touches the data it protects.
    """

    def chunks():
        yield _MAGIC
        for file, row_bytes, physical, old in sections:
            name = file.encode("utf-8")
            yield struct.pack("<Q", len(name)) + name
            yield struct.pack("<QQ", row_bytes, len(physical))
            yield physical.astype("<u8").tobytes()
            yield old

    tmp = os.path.join(directory, NAME + ".tmp")
    files.write_new(tmp, chunks(), durable=durable)
    os.replace(tmp, os.path.join(directory, NAME))
    if durable:
        files.sync(directory)


def recover(directory: str, path: str) -> None:
    """Undo an interrupted `replace`, if a journal is there: put the old rows back, then
    delete the journal. Called holding the write lock."""
    journal = os.path.join(directory, NAME)
    try:
        with open(journal, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return
    what = f"{path}: the undo journal {NAME}"
    for file, row_bytes, physical, old in _parse(data, what):
        try:
            fd = os.open(os.path.join(directory, file), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # the file is gone, and its rows with it: nothing to restore
        try:
            # The rows were read from inside the file; a journal that says otherwise is damaged.
            if physical and (max(physical) + 1) * row_bytes > os.fstat(fd).st_size:
                raise CorruptStoreError(f"{what} names rows past the end of {file}")
            # Last index first, so that for a row listed twice the oldest contents win.
            for k in range(len(physical) - 1, -1, -1):
                row = old[k * row_bytes : (k + 1) * row_bytes]
                files.write_all(fd, row, physical[k] * row_bytes)
        finally:
            os.close(fd)
    os.unlink(journal)


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
        physical = np.frombuffer(take(8 * n), "<u8").tolist()
        sections.append((file, row_bytes, physical, take(n * row_bytes)))
    return sections
