"""Conversion helpers: `.npy` / `.npz` files and folders of them into a store, and arrays back
out to `.npy`, streaming in chunks of rows so files larger than memory convert.

Errors: a file that is not a valid `.npy`/`.npz` (bad magic or header, truncated data, a
corrupt zip member, pickled Python objects, a 0-d array) raises InvalidArgumentError; a dtype
numpack does not store raises DTypeError; an operating-system error (missing file, no
permission, disk full) raises StoreIOError, which is also an OSError.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from numpy.lib import format as npy_format

from . import _dtypes, _progress
from ._errors import InvalidArgumentError, InvalidTypeError, NumPackError, StoreIOError
from ._lazy import as_bytes
from ._store import NumPack, _check_name

StrPath = Union[str, "os.PathLike[str]"]  # a path argument

# Rows are copied in chunks of about this many bytes (at least one row).
CHUNK_BYTES = 32 << 20


# -- helpers ----------------------------------------------------------------------------------


def _os_error(e: OSError) -> StoreIOError:
    return StoreIOError(e.errno, e.strerror or str(e), e.filename)


@contextlib.contextmanager
def _errors(where: str) -> Iterator[None]:
    """numpack's classes for what reading or writing a file can raise."""
    try:
        yield
    except NumPackError:
        raise
    except OSError as e:
        raise _os_error(e) from e
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise InvalidArgumentError(f"{where}: not a valid .npy/.npz file ({e})") from e


@contextlib.contextmanager
def _opened(store_or_path) -> Iterator[NumPack]:
    """The NumPack given, or one opened at the path given and closed afterwards."""
    if isinstance(store_or_path, NumPack):
        yield store_or_path
    elif isinstance(store_or_path, (str, os.PathLike)):
        with NumPack(store_or_path) as npk:
            yield npk
    else:
        raise InvalidTypeError(
            f"expected a NumPack or the path of one, got {type(store_or_path).__name__}"
        )


def _file_path(path, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidTypeError(f"{what} must be a path, got {type(path).__name__}")
    return os.fspath(path)


def _chunk_rows(row_bytes: int, chunk_rows) -> int:
    if chunk_rows is None:
        return max(1, CHUNK_BYTES // max(1, row_bytes))
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)):
        raise InvalidTypeError(f"chunk_rows must be an int, got {chunk_rows!r}")
    if chunk_rows < 1:
        raise InvalidArgumentError(f"chunk_rows must be at least 1, got {chunk_rows}")
    return int(chunk_rows)


# -- sources: one array in a file, described by its header, read in chunks of rows ------------


@dataclass
class _Source:
    name: str  # the array name in the store
    file: str
    member: str | None  # the member of an .npz, None for an .npy file
    shape: tuple
    dtype: np.dtype
    fortran: bool

    @property
    def where(self) -> str:
        return self.file if self.member is None else f"{self.file}[{self.member}]"

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]

    @contextlib.contextmanager
    def reader(self) -> Iterator:
        """A function `read(k)` returning the next (up to) `k` rows."""
        with _errors(self.where):
            if self.member is None:
                arr = np.load(self.file, mmap_mode="r", allow_pickle=False)
                self._check(arr.shape, arr.dtype)
                yield _sliced(arr)
                del arr  # closes the mapping once the last chunk is gone
                return
            with zipfile.ZipFile(self.file) as zf, zf.open(self.member) as fp:
                shape, fortran, dtype = _read_header(fp, self.where)
                self._check(shape, dtype)
                if fortran:  # rows are not contiguous in the stream: the member at once
                    arr = _read_exact(fp, self.nbytes, self.where)
                    arr = np.frombuffer(arr, dtype).reshape(shape, order="F")
                    yield _sliced(arr)
                else:
                    yield _streamed(fp, self)

    def _check(self, shape, dtype) -> None:
        if tuple(shape) != self.shape or np.dtype(dtype) != self.dtype:
            raise InvalidArgumentError(f"{self.where}: the file changed while importing it")


def _sliced(arr: np.ndarray):
    pos = 0

    def read(k: int) -> np.ndarray:
        nonlocal pos
        chunk = arr[pos : pos + k]
        pos += len(chunk)
        return chunk

    return read


def _streamed(fp, source: _Source):
    def read(k: int) -> np.ndarray:
        data = _read_exact(fp, k * source.row_bytes, source.where)
        return np.frombuffer(data, source.dtype).reshape((k,) + source.shape[1:])

    return read


def _read_exact(fp, n: int, where: str) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = fp.readinto(view[got:])
        if not k:
            raise InvalidArgumentError(f"{where}: the data ends early (truncated file)")
        got += k
    return buf


def _read_header(fp, where: str) -> tuple:
    """(shape, fortran_order, dtype) of the .npy stream `fp`, left at the start of the data."""
    version = npy_format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
    else:
        raise InvalidArgumentError(f"{where}: .npy format version {version} is not supported")
    if dtype.hasobject:
        raise InvalidArgumentError(
            f"{where} holds Python objects (pickled data), which numpack does not import"
        )
    return tuple(shape), bool(fortran), dtype


def _source(name, file: str, member: str | None, fp) -> _Source:
    where = file if member is None else f"{file}[{member}]"
    shape, fortran, dtype = _read_header(fp, where)
    name = _check_name(name)
    if not shape:
        raise InvalidArgumentError(
            f"{where} holds a 0-d array; a store holds rows (save it reshaped to (1,))"
        )
    _dtypes.disk_dtype(dtype, name)  # DTypeError now rather than after other arrays
    return _Source(name, file, member, shape, dtype, fortran)


def _npy_source(file: str, name) -> _Source:
    with _errors(file), open(file, "rb") as fp:
        return _source(Path(file).stem if name is None else name, file, None, fp)


def _npz_sources(file: str, prefix: str = "") -> list[_Source]:
    out = []
    with _errors(file), zipfile.ZipFile(file) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise InvalidArgumentError(
                    f"{file}: member {info.filename!r} is not an .npy array (not an .npz file?)"
                )
            with zf.open(info) as fp:
                name = prefix + info.filename[: -len(".npy")]
                out.append(_source(name, file, info.filename, fp))
    return out


def _check_unique(sources: list[_Source]) -> None:
    seen: dict[str, str] = {}
    for s in sources:
        if s.name in seen:
            raise InvalidArgumentError(
                f"{seen[s.name]} and {s.where} would both become the array {s.name!r}"
            )
        seen[s.name] = s.where


# -- copying ----------------------------------------------------------------------------------


def _copy(npk: NumPack, s: _Source, compress, level, block_rows, chunk_rows, bar) -> None:
    """Copy one source into the store: the first chunk with save, the rest with append."""
    rows = _chunk_rows(s.row_bytes, chunk_rows)
    if compress and block_rows is not None:
        rows = -(-rows // block_rows) * block_rows
    n = s.shape[0]
    with s.reader() as read:
        first = read(min(rows, n))
        npk.save({s.name: first}, compress, compression_level=level, block_rows=block_rows)
        bar.update(first.nbytes)
        pos = len(first)
        del first
        if pos < n and compress:
            # An append re-encodes the last partial block: end every chunk on a block boundary.
            block = npk.get_metadata()["arrays"][s.name]["compression"]["block_rows"]
            rows = max(block, -(-rows // block) * block)
        while pos < n:
            chunk = read(min(n, (pos // rows + 1) * rows) - pos)
            with _errors(s.where):
                npk.append({s.name: chunk})
            bar.update(chunk.nbytes)
            pos += len(chunk)


def _import(store_or_path, sources, compress, level, block_rows, chunk_rows, progress, desc):
    _check_unique(sources)
    total = sum(s.nbytes for s in sources)
    with _opened(store_or_path) as npk, _progress.bar(progress, total, desc) as bar:
        for s in sources:
            _copy(npk, s, compress, level, block_rows, chunk_rows, bar)
    return [s.name for s in sources]


_COPY_DOC = """
    The copy streams: it holds one chunk of `chunk_rows` rows in memory (default: about
    32 MiB of rows), saving the first chunk and appending the rest. With `compress=True`
    (zstd, at `compression_level` with `block_rows` rows a block, as in `NumPack.save`) the
    chunks end on block boundaries, so no block is compressed twice. An existing array of
    the same name is replaced. The copy is not one atomic step: if it fails part way, the
    array holds the rows copied so far (and an array it replaced is gone); import again.
    `progress=True` shows a tqdm bar of the bytes copied (when tqdm is installed; otherwise
    nothing).

    Errors: InvalidArgumentError for a file that is not a valid .npy/.npz (or holds pickled
    objects or a 0-d array), DTypeError for a dtype numpack does not store, StoreIOError (an
    OSError) for a missing or unreadable file.
"""


def import_npy(
    store_or_path: NumPack | StrPath,
    path: StrPath,
    name: str | None = None,
    *,
    compress: bool = False,
    compression_level: int | None = None,
    block_rows: int | None = None,
    chunk_rows: int | None = None,
    progress: bool = False,
) -> str:
    """Copy the `.npy` file at `path` into the store as the array `name` (default: the file
    name without `.npy`); returns the array name. `store_or_path` is a NumPack or the path of
    one (opened and closed again).

    The file is memory-mapped (`np.load(mmap_mode="r")`), so any byte order and C or Fortran
    order is read a chunk at a time; the store gets little-endian C-order rows.
    """
    file = _file_path(path, "path")
    sources = [_npy_source(file, name)]
    return _import(
        store_or_path,
        sources,
        compress,
        compression_level,
        block_rows,
        chunk_rows,
        progress,
        "numpack import",
    )[0]


def import_npz(
    store_or_path: NumPack | StrPath,
    path: StrPath,
    *,
    compress: bool = False,
    compression_level: int | None = None,
    block_rows: int | None = None,
    chunk_rows: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Copy every member of the `.npz` file at `path` (from `np.savez` or
    `np.savez_compressed`) into the store, one array per member named as `np.load` names it
    (`"arr_0"`, or the keyword given to `np.savez`); returns the array names.

    Members cannot be memory-mapped; each is read from the zip stream a chunk at a time, so
    memory stays bounded by a chunk, except for a Fortran-order member, whose rows are not
    contiguous in the stream: it is read whole (bounded by one member). Each member is its
    own copy; all headers are checked before the first is copied.
    """
    file = _file_path(path, "path")
    sources = _npz_sources(file)
    return _import(
        store_or_path,
        sources,
        compress,
        compression_level,
        block_rows,
        chunk_rows,
        progress,
        "numpack import",
    )


def import_folder(
    store_or_path: NumPack | StrPath,
    folder: StrPath,
    *,
    pattern: str = "*.np[yz]",
    compress: bool = False,
    compression_level: int | None = None,
    block_rows: int | None = None,
    chunk_rows: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Copy the `.npy` and `.npz` files in `folder` that match the glob `pattern` (relative to
    `folder`; `"**/*.npy"` reaches subfolders) into the store, in sorted order; returns the
    array names.

    An `x.npy` becomes the array `"x"`, each member `m` of an `x.npz` the array `"x/m"`; in a
    subfolder the relative path is kept (`"sub/x"`). Every file's header is checked before
    anything is copied; a pattern that matches nothing, or matches a file that is neither
    `.npy` nor `.npz`, raises InvalidArgumentError.
    """
    root = Path(_file_path(folder, "folder"))
    if not isinstance(pattern, str):
        raise InvalidTypeError(f"pattern must be a str, got {type(pattern).__name__}")
    if not root.is_dir():
        raise InvalidArgumentError(f"{os.fspath(root)!r} is not a folder")
    try:
        files = sorted(p for p in root.glob(pattern) if p.is_file())
    except (NotImplementedError, ValueError) as e:
        raise InvalidArgumentError(f"bad pattern {pattern!r}: {e}") from None
    if not files:
        raise InvalidArgumentError(f"no file in {os.fspath(root)!r} matches {pattern!r}")
    sources = []
    for p in files:
        stem = p.relative_to(root).with_suffix("").as_posix()
        if p.suffix.lower() == ".npy":
            sources.append(_npy_source(os.fspath(p), stem))
        elif p.suffix.lower() == ".npz":
            sources += _npz_sources(os.fspath(p), prefix=stem + "/")
        else:
            raise InvalidArgumentError(f"{os.fspath(p)!r} is neither a .npy nor a .npz file")
    return _import(
        store_or_path,
        sources,
        compress,
        compression_level,
        block_rows,
        chunk_rows,
        progress,
        "numpack import",
    )


for _f in (import_npy, import_npz, import_folder):
    if _f.__doc__:  # None under python -OO
        _f.__doc__ += _COPY_DOC


def export_npy(
    store_or_path: NumPack | StrPath, name: str, path: StrPath, *, progress: bool = False
) -> str:
    """Write the array `name` to a `.npy` file at `path` (exactly that path; no `.npy` is
    added), streaming: rows are read from the store and written a chunk (about 32 MiB) at a
    time, so arrays larger than memory export. The file is little-endian, C order, format
    1.0 (2.0 when the header needs it), readable by `np.load`; it is written under a
    temporary name and renamed, so a failed export leaves no partial file. Returns the path.

    `progress=True` shows a tqdm bar of the bytes written (when tqdm is installed).
    ArrayNotFoundError for a missing array, StoreIOError (an OSError) when the file cannot
    be written.
    """
    file = _file_path(path, "path")
    progress = _progress.check(progress)
    with _opened(store_or_path) as npk:
        lazy = npk.load(name, lazy=True)
        header = {
            "descr": npy_format.dtype_to_descr(lazy.dtype),
            "fortran_order": False,
            "shape": lazy.shape,
        }
        row_bytes = lazy.itemsize * int(np.prod(lazy.shape[1:], dtype=np.int64))
        rows = _chunk_rows(row_bytes, None)
        tmp = f"{file}.{os.getpid()}.numpack-tmp"
        try:
            bar = _progress.bar(progress, lazy.nbytes, "numpack export")
            with open(tmp, "wb") as f, bar:
                try:
                    npy_format.write_array_header_1_0(f, header)
                except ValueError:  # the header does not fit format 1.0
                    f.seek(0)
                    f.truncate()
                    npy_format.write_array_header_2_0(f, header)
                for start in range(0, len(lazy), rows):
                    chunk = lazy._read(slice(start, min(start + rows, len(lazy))))
                    f.write(as_bytes(chunk))
                    bar.update(chunk.nbytes)
            os.replace(tmp, file)
        except OSError as e:
            raise _os_error(e) from e
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return file


__all__ = ["export_npy", "import_folder", "import_npy", "import_npz"]
