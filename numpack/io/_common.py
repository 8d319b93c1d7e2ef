"""What the converters share: batch sizes, lazy imports of optional libraries, paths, and writing
into a store or an output file so that a failure leaves nothing half-written."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import shutil
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Union

import numpy as np

from .. import _dtypes, _package, _progress
from .._convert import CHUNK_BYTES
from .._errors import (
    ArrayNotFoundError,
    DependencyError,
    InvalidArgumentError,
    InvalidTypeError,
    NumPackError,
    StoreIOError,
)
from .._store import NumPack

StrPath = Union[str, "os.PathLike[str]"]
StoreOrPath = Union[NumPack, str, "os.PathLike[str]"]
Batches = Generator[np.ndarray, None, None]

DEFAULT_CHUNK_SIZE = CHUNK_BYTES
"""Bytes of rows a conversion holds in memory at a time (at least one row): 32 MiB."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional library, or raise DependencyError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DependencyError(
            f"this conversion needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'numpack[{extra}]'"
        ) from e


# -- arguments ------------------------------------------------------------------------------


def fspath(path: Any, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidTypeError(f"{what} must be a path, got {type(path).__name__}")
    return os.fspath(path)


def existing(path: Any, what: str) -> str:
    """The path, which must exist (StoreIOError with ENOENT, an OSError, if it does not)."""
    p = fspath(path, what)
    if not os.path.exists(p):
        raise StoreIOError(errno.ENOENT, f"{what} does not exist", p)
    return p


def check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidTypeError(f"array names are str, got {type(name).__name__}")
    if not name:
        raise InvalidArgumentError("array names must not be empty")
    return name


def names_arg(names: Any, what: str) -> list[str] | None:
    """None, one name, or a sequence of names, as a list of names (None stays None)."""
    if names is None:
        return None
    if isinstance(names, str):
        return [names]
    try:
        items = list(names)
    except TypeError:
        raise InvalidTypeError(
            f"{what} must be a list of names, got {type(names).__name__}"
        ) from None
    return [check_name(n) for n in items]


def batch_rows(row_bytes: int, chunk_size: Any, multiple: int = 1) -> int:
    """Rows in a batch of at most `chunk_size` bytes: at least one, a multiple of `multiple`."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise InvalidTypeError(f"chunk_size must be an int (bytes), got {chunk_size!r}")
    if chunk_size < 1:
        raise InvalidArgumentError(f"chunk_size must be at least 1 byte, got {chunk_size}")
    rows = max(1, int(chunk_size) // max(1, row_bytes))
    return max(multiple, rows - rows % multiple)


def row_bytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))


def supported(dtype: np.dtype, where: str) -> np.dtype:
    """`dtype` if a store holds it, else DTypeError naming `where`."""
    _dtypes.disk_dtype(np.dtype(dtype), where)
    return np.dtype(dtype)


@contextlib.contextmanager
def os_errors() -> Iterator[None]:
    """Operating-system errors as StoreIOError (still an OSError), so all are NumPackErrors."""
    try:
        yield
    except NumPackError:
        raise
    except OSError as e:
        raise StoreIOError(e.errno, e.strerror or str(e), e.filename) from e


# -- stores ---------------------------------------------------------------------------------


@contextlib.contextmanager
def opened(store: Any, *, create: bool, backend: str | None = None) -> Iterator[NumPack]:
    """The NumPack given, or one opened at the path given (and closed after). Without `create`
    the store must exist: NumPack() would create an empty one at a mistyped path."""
    if isinstance(store, NumPack):
        yield store
        return
    path = fspath(store, "the store path")
    if not create and not os.path.isdir(path) and not _package.is_package(path):
        raise StoreIOError(errno.ENOENT, "no NumPack store there", path)
    with os_errors(), NumPack(path, backend=backend) as npk:
        yield npk


def pick_array(npk: NumPack, array_name: Any) -> str:
    """`array_name`, which must exist; None picks the store's only array."""
    if array_name is None:
        names = npk.get_member_list()
        if len(names) != 1:
            raise InvalidArgumentError(
                f"the store at {npk.path} holds {len(names)} arrays {names[:10]}: "
                "pass array_name to choose one"
            )
        return names[0]
    check_name(array_name)
    if not npk.has_array(array_name):
        raise ArrayNotFoundError(f"no array named {array_name!r} in {npk.path}")
    return array_name


def pick_arrays(npk: NumPack, array_names: Any) -> list[str]:
    """The arrays named (each must exist), or all of them for None."""
    names = names_arg(array_names, "array_names")
    if names is None:
        return npk.get_member_list()
    for name in names:
        pick_array(npk, name)
    return names


def stream(lazy: Any, rows: int) -> Batches:
    """The live rows of a LazyArray, `rows` at a time (at least one batch, maybe empty)."""
    n = len(lazy)
    for start in range(0, max(n, 1), rows):
        yield lazy.rows(slice(start, min(start + rows, n)))


# -- writing into a store -------------------------------------------------------------------


@dataclass
class Source:
    """One array to import: its name in the store, shape, dtype, and a function giving its rows
    in order, a batch of (at most) the given number of rows at a time."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    batches: Callable[[int], Batches]
    where: str  # the input, for error messages

    @property
    def nbytes(self) -> int:
        return row_bytes(self.shape, self.dtype) * self.shape[0]


def source(
    name: Any, shape: Sequence[int], dtype: Any, batches: Callable[[int], Batches], where: str
) -> Source:
    """A Source, checked: a valid name, at least one dimension, a dtype a store holds."""
    name = check_name(name)
    if len(shape) == 0:
        raise InvalidArgumentError(
            f"{where} is 0-d (a scalar); a store holds rows: convert it reshaped to (1,)"
        )
    return Source(name, tuple(int(d) for d in shape), supported(dtype, where), batches, where)


def array_source(name: Any, arr: Any, where: str) -> Source:
    """A Source reading an in-memory array (anything `np.asarray` takes) a batch at a time."""
    arr = np.asarray(arr)
    n = arr.shape[0] if arr.ndim else 0
    return source(name, arr.shape, arr.dtype, sliced(lambda a, b: arr[a:b], n), where)


def sliced(read: Callable[[int, int], Any], n: int) -> Callable[[int], Batches]:
    """Batches from `read(start, stop)`, a function reading rows `start:stop`."""

    def batches(rows: int) -> Batches:
        for start in range(0, n, rows):
            yield np.asarray(read(start, min(start + rows, n)))

    return batches


def write_sources(
    output: Any,
    sources: Sequence[Source],
    *,
    drop_if_exists: bool,
    chunk_size: Any,
    progress: bool,
    desc: str,
) -> None:
    """Write each source into the store `output` (a NumPack or a path): its first batch with
    `save` (replacing an array of that name), the rest with `append`, all in one transaction:
    other readers see every array at the end or none, and if anything fails the store is left
    as it was (a store this call created is removed)."""
    seen: set[str] = set()
    for s in sources:
        if s.name in seen:
            raise InvalidArgumentError(f"two inputs would both become the array {s.name!r}")
        seen.add(s.name)
        batch_rows(row_bytes(s.shape, s.dtype), chunk_size)  # checks chunk_size before writing
    _progress.check(progress)
    new = None if isinstance(output, NumPack) else os.path.abspath(fspath(output, "output_path"))
    if new is not None and os.path.lexists(new):
        new = None
    try:
        with opened(output, create=True) as npk, npk.transaction():
            if drop_if_exists:
                npk.reset()
            total = sum(s.nbytes for s in sources)
            with _progress.bar(progress, total, desc) as bar:
                for s in sources:
                    _write(npk, s, chunk_size, bar)
    except BaseException:
        if new is not None:
            _remove(new)
        raise


def _write(npk: NumPack, s: Source, chunk_size: Any, bar: Any) -> None:
    batches = s.batches(batch_rows(row_bytes(s.shape, s.dtype), chunk_size))
    rows, first = 0, True
    try:
        for batch in _reading(batches, s.where):
            if batch.dtype != s.dtype or batch.shape[1:] != s.shape[1:]:
                raise InvalidArgumentError(f"{s.name!r}: the input changed while converting it")
            with os_errors():
                if first:
                    npk.save({s.name: batch})
                    first = False
                else:
                    npk.append({s.name: batch})
            rows += len(batch)
            bar.update(batch.nbytes)
    finally:
        batches.close()
    if first:  # no batch at all: an empty array
        with os_errors():
            npk.save({s.name: np.empty((0,) + s.shape[1:], s.dtype)})
    if rows != s.shape[0]:
        raise InvalidArgumentError(
            f"{s.name!r}: the input gave {rows} rows where it announced {s.shape[0]}"
        )


def _reading(batches: Batches, where: str) -> Batches:
    """The batches, with what reading them raises as numpack's errors: a library's error on a
    damaged input becomes InvalidArgumentError (with the library's error as its cause)."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (NumPackError, MemoryError):
            raise
        except OSError as e:
            raise StoreIOError(e.errno, e.strerror or str(e), e.filename) from e
        except Exception as e:
            raise InvalidArgumentError(f"{where}: reading it failed: {e!r}") from e
        yield batch


# -- writing an output file -----------------------------------------------------------------


@contextlib.contextmanager
def staged(path: Any, what: str = "output_path") -> Iterator[str]:
    """A temporary path beside `path` to write the output at: it replaces `path` (a file or a
    directory) when the block succeeds and is removed when it fails, so a failed export leaves
    no partial output."""
    dst = os.path.abspath(fspath(path, what))
    parent, base = os.path.split(dst)
    tmp = os.path.join(parent, f".{base}.{uuid.uuid4().hex[:12]}.numpack-tmp")
    with os_errors():
        try:
            yield tmp
            _move(tmp, dst)
        except BaseException:
            _remove(tmp)
            raise


def _move(tmp: str, dst: str) -> None:
    if os.path.isdir(tmp) or (os.path.isdir(dst) and not os.path.islink(dst)):
        if os.path.lexists(dst):  # rename() will not replace a directory: move it aside first
            old = tmp + ".old"
            os.rename(dst, old)
            try:
                os.rename(tmp, dst)
            except BaseException:
                os.rename(old, dst)
                raise
            _remove(old)
            return
    os.replace(tmp, dst)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
