"""Writing the store's files: new files whole, and bytes at an offset of an existing one."""

from __future__ import annotations

import os
from collections.abc import Iterable


def write_all(fd: int, data, offset: int | None = None) -> None:
    """Write every byte of `data` at the file position, or at `offset` (writes may be short)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def write_new(path: str, chunks: Iterable, durable: bool = False) -> None:
    """Create `path` holding the `chunks` of bytes; on failure, leave no file behind.

    A file of that name can only be a leftover of an interrupted call: it is unlinked rather
    than truncated, because a process may still map it and must keep its bytes.
    """
    remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove(path)
        raise
    os.close(fd)


def sync(path: str) -> None:
    """fsync a file or a directory (its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
