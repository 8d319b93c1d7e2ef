"""Writing the store's files: new files whole, files replaced by rename, and bytes at an offset
of an existing one."""

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


def replace(directory: str, name: str, data: bytes, durable: bool = False) -> os.stat_result:
    """Put a file `name` holding `data` in place at once: written as `name.<pid>.tmp`, then
    renamed over `name`. With `durable`, the file is synced before the rename and the
    directory after it. Returns the new file's stat."""
    tmp = os.path.join(directory, f"{name}.{os.getpid()}.tmp")
    write_new(tmp, [data], durable)
    try:
        st = os.stat(tmp)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        remove(tmp)
        raise
    if durable:
        sync(directory)
    return st


def sync(path: str) -> None:
    """fsync a file or a directory (its entries) by path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
