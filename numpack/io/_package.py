"""Single-file packages (spec/FORMAT.md 10): pack / unpack / get_package_info, NumPack 0.7's
names. `NumPack(package_path)` opens a package in place, read-only, without unpacking it."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import _dtypes, _package, _package07, _progress
from .._compat07 import chunk_rows
from .._errors import InvalidArgumentError, InvalidTypeError, StoreIOError
from .._import07 import import_numpack07
from .._lazy import as_bytes
from .._python.compress import default_block_rows
from .._store import NumPack
from ._common import StrPath, _remove, existing, fspath, opened, os_errors, row_bytes, staged

SUFFIX = ".npkg"


def pack(
    source: StrPath,
    target: StrPath | None = None,
    compression: bool = True,
    overwrite: bool = False,
    *,
    progress: bool = False,
) -> Path:
    """Pack the store at `source` into one file, `target` (default: the store's path with
    `.npkg` added), which `NumPack(target)` opens in place, read-only. Returns its path.

    With `compression=True` raw arrays are stored zstd-compressed in blocks (random access
    stays); with False they stay raw, so `load(name, lazy=True)` maps them straight from the
    package. Compressed arrays keep their level and blocks. Only live rows are packed. While it
    reads, the store's write lock is held (where the file system lets it be taken), so the
    package is one consistent version of the store. The package is written beside `target`
    under a temporary name and renamed into place: a failure leaves no partial package. An
    existing `target` is replaced only with `overwrite=True`.
    """
    src = existing(source, "source")
    if not isinstance(compression, bool):
        raise InvalidTypeError(f"compression must be True or False, got {compression!r}")
    _progress.check(progress)
    dst = _target(target, src.rstrip(os.sep) + SUFFIX, overwrite)
    with opened(src, create=False) as npk, _frozen(npk), staged(dst, "target") as tmp:
        work = tmp + ".store"
        try:
            with NumPack(work, backend=npk.backend) as out:
                _copy_arrays(npk, out, compression, progress)
                out.compact()  # drops blocks superseded while appending, if any
                snapshot = out._s.snapshot()
                members = [(e.file, os.path.join(work, e.file)) for e in out._entries()]
                total = sum(os.path.getsize(p) for _, p in members)
                with _progress.bar(progress, total, "pack") as bar:
                    _package.write(tmp, snapshot, members, bar.update)
        finally:
            _remove(work)
    return Path(dst)


def _target(target: Any, default: str, overwrite: Any) -> str:
    if not isinstance(overwrite, bool):
        raise InvalidTypeError(f"overwrite must be True or False, got {overwrite!r}")
    dst = os.path.abspath(default if target is None else fspath(target, "target"))
    if os.path.lexists(dst) and not overwrite:
        raise StoreIOError(errno.EEXIST, "target exists (overwrite=True replaces it)", dst)
    with os_errors():
        os.makedirs(os.path.dirname(dst), exist_ok=True)  # as NumPack() makes a store's
    return dst


@contextlib.contextmanager
def _frozen(npk: NumPack):
    """Holds `npk`'s write lock, so no writer changes it while it is read; a store that cannot
    be written (a package, a read-only file system) cannot change, so it needs none."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(npk.transaction())
        except StoreIOError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
        yield


def _copy_arrays(npk: NumPack, out: NumPack, compression: bool, progress: bool) -> None:
    """Copies every array's live rows from `npk` into `out`, in one transaction, a block-aligned
    chunk at a time (so the appends re-encode no partial block)."""
    entries = npk._entries()
    total = sum(int(np.prod(e.shape, dtype=np.int64)) * np.dtype(e.dtype).itemsize for e in entries)
    with out.transaction(), _progress.bar(progress, total, "copy") as bar:
        for e in entries:
            lazy = npk.load(e.name, lazy=True)
            rb = row_bytes(lazy.shape, lazy.dtype)
            if e.compression is not None:
                level, block_rows = e.compression["level"], e.compression["block_rows"]
            elif compression:
                level, block_rows = 3, default_block_rows(rb)
            else:
                level, block_rows = None, None
            step = chunk_rows(rb, block_rows or 1)
            for start in range(0, max(1, len(lazy)), step):
                rows = _dtypes.to_disk(lazy.rows(slice(start, start + step)), e.name)
                item = [(e.name, rows.dtype.str, rows.shape, as_bytes(rows))]
                if start == 0:
                    out._s.save(item, level, block_rows)
                else:
                    out._s.append(item)
                bar.update(rows.nbytes)


def unpack(
    source: StrPath,
    target: StrPath | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> Path:
    """Unpack the package `source` into a store directory, `target` (default: the package's
    path without `.npkg`), that can be changed. Returns its path. With `verify=True` every
    member's CRC-32 is checked (CorruptStoreError on damage). The directory is written under a
    temporary name and renamed into place; an existing `target` is replaced only with
    `overwrite=True`.

    A package written by NumPack 0.7 (its `pack`) is converted: its store is extracted beside
    `target`, then converted by `numpack.import_numpack07` (its dropped rows left out)."""
    src = existing(source, "source")
    if not isinstance(verify, bool):
        raise InvalidTypeError(f"verify must be True or False, got {verify!r}")
    default = src[: -len(SUFFIX)] if src.endswith(SUFFIX) else None
    if target is None and default is None:
        raise InvalidArgumentError(f"{src} does not end in {SUFFIX}: pass the target directory")
    dst = _target(target, default or "", overwrite)
    if _package07.is_package07(src):
        with staged(dst, "target") as tmp:
            work = tmp + ".07"
            try:
                _package07.extract(src, work, verify)
                import_numpack07(work, tmp)
            finally:
                _remove(work)
        return Path(dst)
    with os_errors():
        pkg = _open(src)
    try:
        with NumPack(src):
            pass  # its metadata is valid, and names members that hold what it says
        with staged(dst, "target") as tmp:
            os.mkdir(tmp)
            for name in pkg.members:
                pkg.extract(name, os.path.join(tmp, name), verify)
    finally:
        pkg.close()
    return Path(dst)


def _open(path: str) -> _package.Package:
    if _package07.is_package07(path):
        raise InvalidArgumentError(
            f"{path} is a package written by NumPack 0.7: numpack.unpack() converts it into a "
            "store directory"
        )
    if not _package.is_package(path):
        raise InvalidArgumentError(f"{path} is not a numpack package")
    return _package.Package(path)


def get_package_info(source: StrPath) -> dict[str, Any]:
    """What the package `source` holds, without unpacking it: NumPack 0.7's keys (`version`,
    `compression` 1 if any array is compressed else 0, `file_count`, `files` as dicts of
    `name`, `original_size`, `compressed_size` (0: members are stored as they are), `offset`,
    `total_original_size` (the arrays' bytes uncompressed), `total_compressed_size` (the
    package's size), `compression_ratio` (their quotient)), and `arrays`: `{name: {"shape",
    "dtype", "compressed", "bytes"}}` (`bytes` is the member's size)."""
    src = existing(source, "source")
    with os_errors():
        pkg = _open(src)
        pkg.close()
        size = os.path.getsize(src)
    files = [
        {"name": n, "offset": o, "original_size": ln, "compressed_size": 0}
        for n, (o, ln, _) in sorted(pkg.members.items(), key=lambda m: m[1][0])
    ]
    with NumPack(src) as npk:
        entries = npk._entries()
    arrays = {
        e.name: {
            "shape": e.shape,
            "dtype": str(np.dtype(e.dtype)),
            "compressed": e.compression is not None,
            "bytes": pkg.members[e.file][1],
        }
        for e in entries
    }
    raw = sum(int(np.prod(e.shape, dtype=np.int64)) * np.dtype(e.dtype).itemsize for e in entries)
    return {
        "version": 1,
        "compression": int(any(a["compressed"] for a in arrays.values())),
        "file_count": len(files),
        "files": files,
        "total_original_size": raw,
        "total_compressed_size": size,
        "compression_ratio": size / raw if raw else 1.0,
        "arrays": arrays,
    }
