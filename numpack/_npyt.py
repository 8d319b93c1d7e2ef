"""NPYT: an .npy file that grows in place, written by one process and read by many.

The file is a valid .npy whose header gives the shape's first entry a fixed width, followed by
the rows and a 40-byte tail of little-endian uint64 `start, end, timestamp_ns, data_offset,
magic` (the layout of the `npyt` package). spec/NPYT.md is the normative description; the
comments here say why the code does what it does.

NPYT and NPY8 are this one pure-Python implementation whatever the backend setting (the
`backend=` argument and NUMPACK_BACKEND are NumPack's; NPYT's signature is npyt's): the work is
memory mapping and a few syscalls, which NumPy and the os module already do without copies.
It is tested once (tests/test_npyt.py, test_npy8.py), not once per backend.
"""

from __future__ import annotations

import ast
import errno
import functools
import itertools
import math
import mmap
import operator
import os
import shutil
import struct
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from ._errors import (
    CorruptStoreError,
    DTypeError,
    InvalidArgumentError,
    InvalidTypeError,
    RowIndexError,
    ShapeMismatchError,
    StoreClosedError,
    StoreLockedError,
    WriterSupersededError,
    os_errors,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (documented in spec/NPYT.md)
    fcntl = None

MAGIC = 20250510080000
TAIL = struct.Struct("<5Q")  # start, end, timestamp_ns, data_offset, magic
TAIL_SIZE = TAIL.size
SHAPE_WIDTH = 21  # width of the shape's first entry; numpy's GROWTH_AXIS_MAX_DIGITS
ALIGN_MARK = ("", "|V0")  # a zero-byte padding field: np.load skips it, we read "align=True"
_NPY_MAGIC = b"\x93NUMPY"
_ZERO = bytes(8)
_LOCK_WAIT_S = 0.1  # how long a writer waits for a lock that someone holds only briefly
_RESIZE_WAIT_S = 2.0  # how long a reader waits for a writer to finish moving the tail


def public_os_errors(cls):
    """Apply _os_errors to every public method of `cls`."""
    for name, value in list(vars(cls).items()):
        if callable(value) and (not name.startswith("_") or name in ("__enter__", "__init__")):
            setattr(cls, name, os_errors(value))
    return cls


# -- low-level file helpers ---------------------------------------------------------------


def pread(fd: int, n: int, pos: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, pos)
    os.lseek(fd, pos, os.SEEK_SET)
    return os.read(fd, n)


def pwrite(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            done = os.pwrite(fd, view, pos)
        else:
            os.lseek(fd, pos, os.SEEK_SET)
            done = os.write(fd, view)
        view, pos = view[done:], pos + done


def try_lock(fd: int) -> bool:
    """Take the exclusive advisory lock on `fd` without waiting; False if someone holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def lock(fd: int, what: str) -> None:
    """The exclusive lock on `fd`, or StoreLockedError once _LOCK_WAIT_S has passed."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    while not try_lock(fd):
        if time.monotonic() >= deadline:
            raise StoreLockedError(f"{what}: {_holder(fd)} holds its write lock")
        time.sleep(0.002)


def unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)


# -- the writer's lock, handed from object to object within a process ------------------------
#
# flock belongs to an open file description, not to a process: a second descriptor opened on
# the same file in the same process is refused like one in another process. So when a newer
# writer object of a file this process already writes asks for the lock (a notebook cell run
# again, npyt's `t.resize(n); t = NPYT(f).load(mmap_mode="r+")`), the descriptor that holds
# the lock is handed to it instead: the lock never leaves the process, and the older object
# is superseded. `_WRITE_LOCKS` finds that descriptor by the file's (st_dev, st_ino).


class WriteLock:
    """The exclusive flock on one file, held by this process for one writer object at a time.

    Each hand-over draws a new `ticket` (unique in the process); the object holding the
    current one is the owner, and only it releases the lock: by `release(ticket)` (its
    close()) or by being garbage-collected (a weakref.finalize on the owner, moved at each
    hand-over). Older owners keep a reference to this object but can neither write through it
    nor release it.
    """

    __slots__ = ("key", "fd", "pid", "ticket", "released", "_finalizer", "_previous")

    def __init__(self, key: tuple[int, int], fd: Fd) -> None:
        self.key, self.fd, self.pid = key, fd, os.getpid()
        self.ticket, self.released = 0, False
        self._finalizer: weakref.finalize | None = None
        self._previous: tuple[weakref.ref, int] | None = None  # for give_back()

    def holds(self, ticket: int | None) -> bool:
        return ticket == self.ticket and not self.released

    def _hand_to(self, owner: object) -> int | None:
        """Make `owner` the owner (the caller holds _WRITE_LOCKS_GUARD); None if released."""
        self._previous = None
        if self._finalizer is not None:
            # From now on the previous owner's collection is harmless.
            detached = self._finalizer.detach()
            if detached is not None:
                self._previous = (weakref.ref(detached[0]), self.ticket)
        if self.released:  # its owner was collected just before the detach
            return None
        self.ticket = next(_TICKETS)
        self._finalizer = weakref.finalize(owner, self.release, self.ticket)
        return self.ticket

    def give_back(self, ticket: int | None) -> None:
        """Undo the hand-over that gave `ticket` (its new owner failed to open the file): the
        previous owner, if still alive, holds the lock again; else it is released."""
        with _WRITE_LOCKS_GUARD:
            if not self.holds(ticket):
                return
            previous, self._previous = self._previous, None
            owner = previous[0]() if previous is not None else None
            if owner is None or previous is None:
                self.release(ticket)
                return
            if self._finalizer is not None:
                self._finalizer.detach()
            self.ticket = previous[1]
            self._finalizer = weakref.finalize(owner, self.release, self.ticket)

    def release(self, ticket: int | None) -> None:
        """Give up the lock, if `ticket` is still the current one (else do nothing)."""
        with _WRITE_LOCKS_GUARD:
            if not self.holds(ticket):
                return
            self.released = True
            if _WRITE_LOCKS.get(self.key) is self:
                del _WRITE_LOCKS[self.key]
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            self.fd.close()  # unlocks: no other descriptor shares this open file description


# Re-entrant: a finalizer releasing a lock may run (garbage collection) while this thread holds
# the guard.
_WRITE_LOCKS_GUARD = threading.RLock()
_WRITE_LOCKS: dict[tuple[int, int], WriteLock] = {}
_TICKETS = itertools.count(1)


def _forget_write_locks() -> None:
    """In a forked child: the parent's writers are not this process's to take over."""
    global _WRITE_LOCKS_GUARD
    _WRITE_LOCKS_GUARD = threading.RLock()
    _WRITE_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_write_locks)


def _held_here(key: tuple[int, int]) -> WriteLock | None:
    wl = _WRITE_LOCKS.get(key)
    if wl is None or wl.released or wl.pid != os.getpid():
        return None
    return wl


def _holder(fd: int) -> str:
    """Who holds the lock on the file open on `fd`, for an error message."""
    try:
        st = os.fstat(fd)
    except OSError:
        return "another writer"
    with _WRITE_LOCKS_GUARD:
        here = _held_here((st.st_dev, st.st_ino)) is not None
    return _IN_PROCESS if here else "another process"


_IN_PROCESS = "a writer object in this process (close() it first)"


def take_write_lock(path, owner: object, take_over: bool = True) -> tuple[WriteLock, int]:
    """The write lock on the file at `path` for `owner`, and owner's ticket.

    If a writer object in this process holds it, `take_over` hands it to `owner` (no waiting);
    otherwise the lock is taken on a new descriptor, waiting up to _LOCK_WAIT_S, then
    StoreLockedError. Opens the file read-write.
    """
    fd, kept = Fd(path, os.O_RDWR), False
    try:
        st = os.fstat(fd.fd)
        key = (st.st_dev, st.st_ino)
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            with _WRITE_LOCKS_GUARD:
                held = _held_here(key)
                if held is not None and take_over:
                    ticket = held._hand_to(owner)
                    if ticket is not None:
                        return held, ticket  # the lock stays on the descriptor that has it
                elif held is None and try_lock(fd.fd):
                    wl = WriteLock(key, fd)
                    ticket = wl._hand_to(owner)
                    assert ticket is not None
                    _WRITE_LOCKS[key] = wl
                    kept = True
                    return wl, ticket
            if time.monotonic() >= deadline:
                who = _IN_PROCESS if held is not None else _holder(fd.fd)
                raise StoreLockedError(f"{path}: {who} holds its write lock")
            time.sleep(0.002)
    finally:
        if not kept:
            fd.close()


def superseded(path, what: str = "file", again: str = "load('r+')") -> WriterSupersededError:
    """The error for a write through an object whose writer's lock a newer one took over."""
    return WriterSupersededError(
        f"{path}: this writer was superseded by a newer writer of the same {what} in this "
        f"process; write through the newer object, or call {again} on this one to take the "
        f"{what} back"
    )


class Fd:
    """An open descriptor closed exactly once, also when its owner is garbage-collected."""

    def __init__(self, path, flags: int):
        self.fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
        self._close = weakref.finalize(self, os.close, self.fd)

    def close(self) -> None:
        self._close()


def map_file(path, fd: int, length: int, writable: bool) -> mmap.mmap:
    """Map the first `length` bytes of the file open on `fd`.

    The map gets its own descriptor: mmap keeps a duplicate of the one it is given, and a
    duplicate of the writer's descriptor would keep the flock alive for as long as any array
    view of the file does.
    """
    own = Fd(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        a, b = os.fstat(own.fd), os.fstat(fd)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            raise _Retry(f"{path} was replaced while being opened")
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        try:
            return mmap.mmap(own.fd, length, access=access)
        except ValueError:  # the file is shorter than its header says: being resized
            raise _Retry(f"{path} is shorter than its header says") from None
    finally:
        own.close()


# -- dtypes and the header ----------------------------------------------------------------


def file_dtype(dtype) -> tuple[np.dtype, tuple]:
    """(dtype of the file, extra row dims): a subarray dtype such as ('<f4', (3,)) stores rows
    of shape (3,) of '<f4', as an ndarray of that dtype would."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise InvalidTypeError(f"not a dtype: {dtype!r} ({e})") from None
    extra: tuple = ()
    if dt.subdtype is not None:
        dt, extra = dt.subdtype
    check_dtype(dt)
    return dt, tuple(extra)


def check_dtype(dt: np.dtype) -> None:
    if dt.hasobject:
        raise DTypeError(f"dtype {dt} holds Python objects, which cannot be memory-mapped")
    if dt.itemsize == 0:
        raise DTypeError(f"dtype {dt} has no size (give strings and void a length)")


def header_descr(dt: np.dtype, marks: bool = True):
    """The header's `descr`: numpy's, plus (with `marks`) ALIGN_MARK closing every aligned
    struct."""
    if dt.names is None:
        return np.lib.format.dtype_to_descr(dt)
    out = []
    for entry in dt.descr:  # in offset order, with ('', '|Vn') for padding
        name = entry[0]
        if name == "":
            out.append(entry)
            continue
        field = dt.fields[name[1] if isinstance(name, tuple) else name][0]
        base = field.subdtype[0] if field.subdtype is not None else field
        if base.names is not None:
            out.append((name, header_descr(base, marks), *entry[2:]))
        else:
            out.append(entry)
    if marks and dt.isalignedstruct:
        out.append(ALIGN_MARK)
    return out


def dtype_from_descr(descr) -> np.dtype:
    """The inverse of header_descr; also reads files from np.save and from the npyt package.

    A struct comes back aligned when it carries ALIGN_MARK or padding (the npyt convention)
    and its layout is exactly what `align=True` gives; any other layout is kept as stored.
    """
    if isinstance(descr, str):
        return np.dtype(descr)
    if isinstance(descr, tuple) and len(descr) == 2:
        return np.dtype((dtype_from_descr(descr[0]), descr[1]))
    if not isinstance(descr, list):
        raise TypeError(f"bad descr {descr!r}")
    names, formats, titles, offsets = [], [], [], []
    offset, hinted = 0, False
    for field in descr:
        if not isinstance(field, tuple) or len(field) not in (2, 3):
            raise TypeError(f"bad descr field {field!r}")
        name, dt = field[0], dtype_from_descr(field[1])
        if len(field) == 3:
            dt = np.dtype((dt, field[2]))
        if name == "" and dt.type is np.void and dt.names is None:  # padding or the mark
            hinted = True
        else:
            title, name = name if isinstance(name, tuple) else (None, name)
            names.append(name)
            formats.append(dt)
            titles.append(title)
            offsets.append(offset)
        offset += dt.itemsize
    spec = {"names": names, "formats": formats, "titles": titles}
    packed = np.dtype({**spec, "offsets": offsets, "itemsize": offset})
    if hinted:
        aligned = np.dtype(spec, align=True)
        same = [aligned.fields[n][1] for n in names] == offsets
        if same and aligned.itemsize == offset:
            return aligned
    return packed


def _shape_text(capacity: int, row_shape: tuple) -> str:
    first = f"{capacity:>{SHAPE_WIDTH}}"
    if not row_shape:
        return f"({first},)"
    return "(" + ", ".join([first, *(repr(int(d)) for d in row_shape)]) + ")"


def header_bytes(
    dt: np.dtype, capacity: int, row_shape: tuple, length: int | None = None, version: int = 0
) -> bytes:
    """The .npy header for `capacity` rows.

    A new file's header (`length` None) is as long as the one the npyt package writes for the
    same array, so that npyt can resize our files in place too: numpy's text (without align
    marks), numpy's spare room, numpy's padding to 64 bytes. The align marks go in when they
    fit in that room. A resize passes the file's `length` and `version` and gets a header of
    exactly that length, so the data never moves.
    """

    def text(marks: bool) -> str:
        return (
            "{'descr': " + repr(header_descr(dt, marks)) + ", 'fortran_order': False, 'shape': "
            + _shape_text(capacity, row_shape) + ", }"
        )  # fmt: skip

    def encode(s: str) -> tuple[bytes, int]:
        try:
            raw = s.encode("latin1")
            return raw, (version or (1 if len(raw) + 128 < 65536 else 2))
        except UnicodeEncodeError:
            return s.encode("utf8"), 3

    plain, version = encode(text(False))
    prefix = 10 if version == 1 else 12
    if length is None:
        spare = SHAPE_WIDTH - len(str(capacity))  # numpy's room for a longer shape
        pad = 64 - (prefix + len(plain) + spare + 1) % 64  # numpy's rule: 1 to 64 spaces
        length = prefix + len(plain) + spare + pad + 1
    raw = encode(text(True))[0]
    if prefix + len(raw) + 1 > length:
        raw = plain
    if prefix + len(raw) + 1 > length:
        raise CorruptStoreError("the .npy header has no room for the new shape")
    size = struct.pack("<H" if version == 1 else "<I", length - prefix)
    return (
        _NPY_MAGIC
        + bytes((version, 0))
        + size
        + raw
        + b" " * (length - prefix - len(raw) - 1)
        + b"\n"
    )


class Header:
    """What a file's .npy header says."""

    __slots__ = ("version", "offset", "dtype", "capacity", "row_shape", "row_bytes")

    def __init__(self, version, offset, dtype, capacity, row_shape):
        self.version, self.offset, self.dtype = version, offset, dtype
        self.capacity, self.row_shape = capacity, row_shape
        # Python integers: a lying header's dimensions must not wrap around as int64 would.
        self.row_bytes = dtype.itemsize * math.prod(row_shape)

    def tail_pos(self, capacity: int | None = None) -> int:
        return self.offset + (self.capacity if capacity is None else capacity) * self.row_bytes


def read_header(fd: int, name) -> Header:
    head = pread(fd, 12, 0)
    if len(head) < 10 or head[:6] != _NPY_MAGIC:
        raise CorruptStoreError(f"{name}: not an .npy file")
    version = head[6]
    if version == 1:
        (hlen,), start = struct.unpack("<H", head[8:10]), 10
    elif version in (2, 3) and len(head) == 12:
        (hlen,), start = struct.unpack("<I", head[8:12]), 12
    else:
        raise CorruptStoreError(f"{name}: unknown .npy version {version}")
    raw = pread(fd, hlen, start) if hlen < 1 << 24 else b""
    if len(raw) != hlen:
        raise CorruptStoreError(f"{name}: truncated .npy header")
    try:
        dt, shape = _parse_header(raw, version)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise CorruptStoreError(f"{name}: unreadable .npy header ({e})") from None
    h = Header(version, start + hlen, dt, shape[0], shape[1:])
    if h.tail_pos() + TAIL_SIZE > _MAX_FILE:
        # No file is that long: the header lies (and its offsets would not fit an off_t).
        raise CorruptStoreError(f"{name}: the .npy header's shape {shape} is impossibly large")
    return h


_PARSE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=256)  # NPY8 opens file after file with the same header
def _parse_header(raw: bytes, version: int) -> tuple[np.dtype, tuple]:
    with _PARSE_LOCK:  # CPython's AST conversion is not thread-safe (SystemError, gh-106905)
        d = ast.literal_eval(raw.decode("utf8" if version == 3 else "latin1"))
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ValueError("wrong keys")
    shape = d["shape"]
    if not (isinstance(shape, tuple) and shape and all(type(x) is int for x in shape)):
        raise ValueError(f"bad shape {shape!r}")
    if min(shape) < 0 or not isinstance(d["fortran_order"], bool):
        raise ValueError("bad shape or fortran_order")
    if d["fortran_order"] and len(shape) > 1:
        raise ValueError("Fortran order: such a file cannot grow by rows")
    dt = dtype_from_descr(d["descr"])
    if dt.subdtype is not None:  # np.load turns these into extra dimensions; so do we
        dt, extra = dt.subdtype
        shape = shape + extra
    if dt.hasobject:
        raise ValueError(f"dtype {dt} holds Python objects")
    return dt, shape


def write_new_file(path: Path, dt, row_shape, rows, capacity, start, end) -> None:
    """Create an NPYT file with `rows` at the front, atomically (a temp file, then rename).

    An existing file is replaced only if no writer holds its lock; readers that have it open
    keep reading the old contents.
    """
    header = header_bytes(dt, capacity, row_shape)
    h = Header(1, len(header), dt, capacity, row_shape)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    guard = None
    try:
        if path.exists():
            guard = Fd(path, os.O_RDONLY)
            lock(guard.fd, str(path))
        with open(tmp, "xb") as f:
            f.write(header)
            if len(rows):
                f.write(np.ascontiguousarray(rows).reshape(-1).view(np.uint8).data)
            f.truncate(h.tail_pos() + TAIL_SIZE)  # the unused rows stay a hole on disk
            f.seek(h.tail_pos())
            f.write(TAIL.pack(start, end, time.time_ns(), h.offset, MAGIC))
        os.replace(tmp, path)
    finally:
        if guard is not None:
            guard.close()
        if tmp.exists():
            tmp.unlink()


def as_rows(array, dt: np.dtype, row_shape: tuple, what) -> np.ndarray:
    """`array` as rows for a file of `dt` and `row_shape`; one row may be given on its own."""
    if not isinstance(array, np.ndarray):
        try:
            array = np.asarray(array, dtype=dt)
        except (TypeError, ValueError) as e:
            raise DTypeError(
                f"{what}: cannot convert {type(array).__name__} to {dt} ({e})"
            ) from None
    if array.ndim == len(row_shape):
        array = array[np.newaxis]
    if tuple(array.shape[1:]) != tuple(row_shape):
        raise ShapeMismatchError(
            f"{what}: rows of shape {tuple(array.shape[1:])} do not fit rows of shape "
            f"{tuple(row_shape)}"
        )
    src = array.dtype
    if src != dt:
        ok = np.can_cast(src, dt, casting="same_kind")
        if dt.names is not None or src.names is not None:
            ok = ok and src.names == dt.names  # numpy casts structs by position, not by name
        if not ok:
            raise DTypeError(f"{what}: cannot cast {src} to the file's dtype {dt}")
    return array


def count_arg(value, what: str, default=None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise InvalidArgumentError(f"{what} must be >= 0, got {value}")
    return int(value)


class _Retry(Exception):
    """The header and tail disagree for now: a writer is moving the tail."""


# Sizes and offsets of a file are signed 64-bit (off_t).
_MAX_FILE = 2**63 - 1


# -- NPYT -----------------------------------------------------------------------------------


@public_os_errors
class NPYT:
    """An .npy file that grows in place: one writer appends, any number of readers follow.

    Same methods, arguments and chaining as `npyt.NPYT` (0.4.x)::

        w = NPYT("ticks.npy", dtype=tick).save(capacity=1_000_000).load("r+")   # writer
        w.append(rows)                         # rows first, then `end` is published
        r = NPYT("ticks.npy").load("r")        # reader, in any process
        new = r.read(1024)                     # rows appended since the last read

    `load("r+")` takes an exclusive advisory lock (flock) on the file; a writer in another
    process gets StoreLockedError. In this process a newer `load("r+")` of the same file takes
    the lock over (a notebook cell run again; npyt's `t = NPYT(f).load(mmap_mode="r+")` while
    the old `t` is alive): the older object becomes a reader, and its writes raise
    WriterSupersededError. Readers take no lock and only ever see complete rows. Arrays
    returned are views of the file (no copy) except `pop`, which returns a copy.
    """

    def __init__(
        self, filename: str | os.PathLike[str], dtype: npt.DTypeLike | None = None
    ) -> None:
        try:
            self._path = Path(os.fspath(filename))
        except TypeError:
            raise InvalidTypeError(f"filename must be a path, got {filename!r}") from None
        # The dtype and row shape the caller expects; None where the file is to tell.
        self._dt, self._rs = None, None
        if dtype is not None:
            self._dt, extra = file_dtype(dtype)
            self._rs = extra or None
        self._mode = None  # None (not loaded), "r" or "r+"
        self._fd = None  # Fd: the writer's locked descriptor (its WriteLock's), or the reader's
        self._lock = None  # WriteLock while a writer, and `_ticket`, this object's turn in it
        self._ticket = None
        self._superseded = False  # a newer writer in this process took the file over
        self._mm = self._a = self._t = self._h = None
        self._start = self._end = self._ts = self._tell = 0

    # -- opening ---------------------------------------------------------------------------

    def load(self, mmap_mode: str = "r") -> NPYT:
        """Map the file: "r" to read, "r+" to read and write (takes the write lock).

        A writer object of the same file in this process hands the lock over: this object
        becomes the writer and the older one is superseded (its writes raise
        WriterSupersededError; it goes on reading). Across processes a second writer gets
        StoreLockedError."""
        return self._open(mmap_mode, take_over=True)

    def _open(self, mmap_mode: str, take_over: bool) -> NPYT:
        """load(); without `take_over`, a writer elsewhere in this process is refused too (for
        whole-file changes on behalf of another call: merge, NPY8's roll-over)."""
        if mmap_mode not in ("r", "r+"):
            raise InvalidArgumentError(f"mmap_mode must be 'r' or 'r+', got {mmap_mode!r}")
        writer = mmap_mode == "r+"
        held = self._mode == "r+" and self._lock.holds(self._ticket)
        fresh = not (writer and held and self._same_inode())
        if fresh:
            self.close()  # our own lock, if any, must go before we take it again
            if writer:
                self._lock, self._ticket = take_write_lock(self._path, self, take_over)
                self._fd = self._lock.fd
            else:
                self._fd = Fd(self._path, os.O_RDONLY)
        self._mode, self._superseded = mmap_mode, False
        try:
            self._map()
        except BaseException:
            if fresh and self._lock is not None:
                # A load that fails changes nothing: an older writer keeps the file.
                self._lock.give_back(self._ticket)
                self._fd = self._lock = self._ticket = None
            self.close()
            raise
        self._tell = self._start
        return self

    def _same_inode(self) -> bool:
        try:
            a, b = os.stat(self._path), os.fstat(self._fd.fd)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _map(self) -> None:
        """Read header and tail and map the rows; readers wait out a resize in progress."""
        deadline = None
        while True:
            try:
                return self._map_once()
            except _Retry as e:
                if self._mode == "r+":  # we hold the lock: nobody else is resizing
                    raise CorruptStoreError(f"{self._path}: {e}") from None
                now = time.monotonic()
                deadline = deadline or now + _RESIZE_WAIT_S
                if now > deadline:
                    raise CorruptStoreError(f"{self._path}: {e}") from None
                time.sleep(0.0005)

    def _map_once(self) -> None:
        fd, writer = self._fd.fd, self._mode == "r+"
        h = read_header(fd, self._path)
        if h.row_bytes == 0:
            raise CorruptStoreError(f"{self._path}: rows of zero bytes")
        if self._dt is not None:
            rs = self._rs if self._rs is not None else h.row_shape
            if self._dt != h.dtype:
                raise DTypeError(f"{self._path}: dtype {h.dtype} in the file, {self._dt} expected")
            if tuple(rs) != h.row_shape:
                raise ShapeMismatchError(
                    f"{self._path}: rows of shape {h.row_shape}, expected {tuple(rs)}"
                )
            h.dtype = self._dt  # equal layouts; keep the caller's (its align flag, say)
        pos, size = h.tail_pos(), os.fstat(fd).st_size
        raw = pread(fd, TAIL_SIZE, pos)
        if len(raw) != TAIL_SIZE or TAIL.unpack(raw)[4] != MAGIC:
            if size == pos:
                raise CorruptStoreError(f"{self._path}: a plain .npy file, without the NPYT tail")
            raise _Retry("no valid tail where the header says")
        start, end, ts, offset, _ = TAIL.unpack(raw)
        if offset != h.offset or not start <= end <= h.capacity:
            raise _Retry(f"tail {start, end, offset} does not fit the header")
        if writer and size > pos + TAIL_SIZE:
            os.ftruncate(fd, pos + TAIL_SIZE)  # a writer killed while growing the file
        # Readers map the rows only: a writer may shrink the file under them, and the tail is
        # read with pread, which cannot fault on a truncated page as a mapped read would.
        mm = map_file(self._path, fd, pos + TAIL_SIZE if writer else pos, writer)
        self._h, self._mm = h, mm
        self._a = np.ndarray((h.capacity, *h.row_shape), h.dtype, buffer=mm, offset=h.offset)
        self._t = np.ndarray((5,), "<u8", buffer=mm, offset=pos) if writer else None
        self._dt, self._rs = h.dtype, h.row_shape
        self._start, self._end, self._ts = start, end, ts

    def close(self) -> None:
        """Drop the mapping and the write lock (unless a newer writer object has taken it
        over). Arrays already returned stay valid."""
        self._mm = self._a = self._t = self._h = None
        if self._lock is not None:
            self._lock.release(self._ticket)  # nothing, if it was handed on
        elif self._fd is not None:
            self._fd.close()
        self._fd = self._lock = self._ticket = None
        self._mode, self._superseded = None, False

    def _writing(self) -> bool:
        """True while this object is the writer; a superseded writer becomes a reader here."""
        lk = self._lock  # set exactly while the mode is "r+"
        if lk is None:
            return False
        if lk.ticket == self._ticket and not lk.released:  # lk.holds(), inlined: every call
            return True
        self._become_reader()
        return False

    def _become_reader(self) -> None:
        """A newer writer took the file over: go on as a reader of it (own descriptor, mapped
        read-only, tail read from the file), or closed if the file is no longer at our path."""
        key = self._lock.key
        self._mm = self._a = self._t = self._h = None
        self._fd = self._lock = self._ticket = None  # the WriteLock is the new writer's now
        self._mode, self._superseded = None, True
        try:
            fd = Fd(self._path, os.O_RDONLY)
        except OSError:
            raise superseded(self._path) from None
        st = os.fstat(fd.fd)
        if (st.st_dev, st.st_ino) != key:
            fd.close()
            raise superseded(self._path)
        self._fd, self._mode = fd, "r"
        try:
            self._map()
        except BaseException:
            self.close()
            self._superseded = True
            raise

    def __enter__(self) -> NPYT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._mode is None:
            state = "superseded by a newer writer" if self._superseded else "not loaded"
            return f"NPYT({str(self._path)!r}, dtype={self._dt}, {state})"
        self._sync()
        return (
            f"NPYT({str(self._path)!r}, dtype={self._dt}, rows={self._rs}, start={self._start}, "
            f"end={self._end}, capacity={self._h.capacity}, mode={self._mode!r})"
        )

    # -- the tail ----------------------------------------------------------------------------

    def _sync(self) -> None:
        """Refresh start and end from the file (readers); the writer's copy is always current.

        The tail is read twice and used only when both reads agree and it is still where the
        header put it: `end` may straddle a cache line, and the writer may be moving the tail.
        """
        if self._mode is None:
            if self._superseded:
                raise superseded(self._path)
            raise StoreClosedError(f"{self._path}: not loaded; call load() first")
        if self._writing():
            return
        fd, pos = self._fd.fd, self._h.tail_pos()
        while True:
            a, b = pread(fd, TAIL_SIZE, pos), pread(fd, TAIL_SIZE, pos)
            if a != b:
                continue  # the writer published between the two reads
            if len(a) == TAIL_SIZE:
                start, end, ts, offset, magic = TAIL.unpack(a)
                if magic == MAGIC and offset == self._h.offset and start <= end <= self._h.capacity:
                    self._start, self._end, self._ts = start, end, ts
                    return
            self._map()  # the writer resized the file: follow the header to the new tail
            return

    def _publish(self, start=None, end=None) -> None:
        """Store start and/or end in the tail; rows must already be in place."""
        t = self._t
        if start is not None:
            t[0] = self._start = start
        if end is not None:
            t[1] = self._end = end
        t[2] = self._ts = time.time_ns()

    def _need_writer(self) -> None:
        lk = self._lock
        if lk is not None and lk.ticket == self._ticket and not lk.released:
            return  # the writer: _writing()'s fast path, inlined (every append comes here)
        if self._writing():
            return
        if self._superseded:
            raise superseded(self._path)
        if self._mode is None:
            raise StoreClosedError(f"{self._path}: not loaded; call load('r+') first")
        if self._mode != "r+":
            raise InvalidArgumentError(f"{self._path}: opened read-only; load('r+') to write")

    # -- creating and growing -----------------------------------------------------------------

    def save(self, array: npt.ArrayLike | None = None, capacity: int = 0,
             end: int | None = None, skip_if_exists: bool = True) -> NPYT:  # fmt: skip
        """Create the file with `array` (None: no rows; needs `dtype`) and room for `capacity`
        rows; `end` rows of it count as data (None: all). Existing files are kept when
        `skip_if_exists`, else replaced atomically. Call load() afterwards."""
        capacity = count_arg(capacity, "capacity")
        if skip_if_exists and self._path.exists():
            return self
        if self._mode == "r+":
            self._writing()  # notices a newer writer
        if self._superseded:
            raise superseded(self._path)
        if array is None:
            if self._dt is None:
                raise InvalidArgumentError("save() without an array needs NPYT(..., dtype=...)")
            rows = np.empty((0, *(self._rs or ())), self._dt)
            capacity, end = max(capacity, 1), 0  # npyt never creates an empty data area here
        else:
            arr = array if isinstance(array, np.ndarray) else np.asarray(array, dtype=self._dt)
            if arr.ndim == 0:
                raise InvalidArgumentError("save() needs an array with at least 1 dimension")
            if self._dt is None:
                self._dt = file_dtype(arr.dtype)[0]
            if self._rs is None:
                self._rs = arr.shape[1:]
            rows = as_rows(arr, self._dt, self._rs, self._path)
            rows = np.ascontiguousarray(rows, dtype=self._dt)
        capacity = max(capacity, len(rows))
        end = count_arg(end, "end", default=len(rows))
        if end > capacity:
            raise InvalidArgumentError(f"end={end} is beyond the capacity {capacity}")
        if rows.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64)) == 0:
            raise InvalidArgumentError("rows of zero bytes cannot be stored")
        self._rs = rows.shape[1:]
        self.close()  # our own lock would refuse the replacement
        write_new_file(self._path, self._dt, self._rs, rows if end else rows[:0], capacity, 0, end)
        return self

    def resize(self, capacity: int | None = None) -> bool:
        """Change the room for rows without moving any: None shrinks to the data; a capacity
        below `end` is raised to `end`, so no row is ever lost. Returns True."""
        self._need_writer()
        new = self._end if capacity is None else max(count_arg(capacity, "capacity"), self._end)
        if new != self._h.capacity:
            self._move_tail(new)
        return True

    def _move_tail(self, new: int) -> None:
        """Rewrite header and tail for `new` rows of capacity.

        The order keeps the file valid for a writer killed at any step (unless old and new
        tail overlap: a change of under 40 bytes) and keeps readers on either layout correct:
        the new tail is complete before the header points at it, and the old tail is
        invalidated (magic 0) before rows can overwrite it or truncation remove it.
        """
        h, fd = self._h, self._fd.fd
        old, pos = h.tail_pos(), h.tail_pos(new)
        overlap = abs(pos - old) < TAIL_SIZE
        tail = TAIL.pack(self._start, self._end, time.time_ns(), h.offset, MAGIC)
        header = header_bytes(h.dtype, new, h.row_shape, length=h.offset, version=h.version)
        self._mm = self._a = self._t = None  # remapped below
        if overlap:
            pwrite(fd, _ZERO, old + 32)
        if pos > old:
            os.ftruncate(fd, pos + TAIL_SIZE)
        pwrite(fd, tail[:32], pos)
        pwrite(fd, tail[32:], pos + 32)  # the magic last: readers trust a tail only with it
        pwrite(fd, header, 0)
        if not overlap:
            pwrite(fd, _ZERO, old + 32)
        if pos < old:
            os.ftruncate(fd, pos + TAIL_SIZE)
        self._map()

    def append(self, array: npt.ArrayLike) -> int:
        """Add rows at `end` if they all fit; returns 0, or the number of rows when they do not
        (then nothing is written)."""
        self._need_writer()
        rows = as_rows(array, self._dt, self._rs, self._path)
        n, end = len(rows), self._end
        if n == 0:
            return 0
        if end + n > self._h.capacity:
            return n
        self._a[end : end + n] = rows
        self._publish(end=end + n)  # only now can readers see them
        return 0

    def expend(self, array: npt.ArrayLike) -> bool:
        """append() that grows the file when full (npyt's spelling; `extend` is the same).

        Growth at least doubles the capacity, so a long series of appends moves the tail only
        O(log n) times; resize() trims the spare room. Returns True."""
        self._need_writer()
        rows = as_rows(array, self._dt, self._rs, self._path)
        need = self._end + len(rows)
        cap = self._h.capacity
        if need > cap:
            self._move_tail(max(need, 2 * cap, cap + -(-64 // self._h.row_bytes)))
        self.append(rows)
        return True

    extend = expend

    # -- reading -------------------------------------------------------------------------------

    def data(self) -> np.ndarray:
        """Rows [start, end) as a view of the file (writable for the writer)."""
        self._sync()
        return self._a[self._start : self._end]

    def head(self, n: int = 5) -> np.ndarray:
        n = count_arg(n, "n")
        self._sync()
        return self._a[self._start : min(self._start + n, self._end)]

    def tail(self, n: int = 5) -> np.ndarray:
        n = count_arg(n, "n")
        self._sync()
        return self._a[max(self._start, self._end - n) : self._end]

    def at(self, index: SupportsIndex) -> Any:
        """Row `index` of data(); negative counts from the end."""
        try:
            i = operator.index(index)
        except TypeError:
            raise InvalidTypeError(f"row index must be an int, got {index!r}") from None
        self._sync()
        size = self._end - self._start
        if not -size <= i < size:
            raise RowIndexError(f"row {index} out of range for {size} rows")
        return self._a[self._start + (i % size)]

    def tell(self) -> int:
        return self._tell

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> NPYT:
        """Move the read position within [start, end]: whence 0 from start, 1 from the current
        position, 2 from end."""
        self._sync()
        if whence == os.SEEK_SET:
            base = self._start
        elif whence == os.SEEK_CUR:
            base = self._tell
        elif whence == os.SEEK_END:
            base = self._end
        else:
            raise InvalidArgumentError(f"whence must be 0, 1 or 2, got {whence!r}")
        self._tell = max(min(base + int(offset), self._end), self._start)
        return self

    def rewind(self) -> NPYT:
        """Back to start (after pop() moved start, say)."""
        self._sync()
        self._tell = self._start
        return self

    def read(self, n: int = 1024, prefetch: int = 0) -> np.ndarray:
        """Up to `n` rows from the read position on, preceded by up to `prefetch` rows already
        read; the position moves past the new rows. Empty when nothing new is published."""
        return self._read(n, prefetch)[0]

    def _read(self, n: int = 1024, prefetch: int = 0) -> tuple[np.ndarray, int]:
        """read() and the number of new rows in it."""
        n, prefetch = count_arg(n, "n"), count_arg(prefetch, "prefetch")
        self._sync()
        tell = min(max(self._tell, self._start), self._end)
        lo = max(tell - prefetch, self._start)
        self._tell = min(tell + n, self._end)
        return self._a[lo : self._tell], self._tell - tell

    def pop(self, n: int | None = None) -> np.ndarray:
        """Remove up to `n` rows (None: all) from the front by moving start; returns a copy."""
        self._need_writer()
        n = self._end - self._start if n is None else count_arg(n, "n")
        stop = min(self._start + n, self._end)
        rows = self._a[self._start : stop].copy()
        self._publish(start=stop)
        return rows

    def clear(self) -> NPYT:
        """Forget every row (start = end = 0); the space is reused by later appends."""
        self._need_writer()
        self._publish(start=0)  # start first: start <= end holds at every instant
        self._publish(end=0)
        self._tell = 0
        return self

    # -- the numbers ---------------------------------------------------------------------------

    def info(self) -> tuple[int, int, int, int, int] | None:
        """The tail: (start, end, timestamp_ns, data_offset, magic); None before load()."""
        if self._mode is None:
            return None
        self._sync()
        return (self._start, self._end, self._ts, self._h.offset, MAGIC)

    def capacity(self) -> int:
        self._sync()
        return self._h.capacity

    def size(self) -> int:
        self._sync()
        return self._end - self._start

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        self._sync()
        return self._end == self._h.capacity

    def start(self) -> int:
        self._sync()
        return self._start

    def end(self) -> int:
        self._sync()
        return self._end

    def timestamp(self) -> int:
        """When the writer last changed start or end, in ns since the epoch."""
        self._sync()
        return self._ts

    def dtype(self) -> np.dtype | None:
        return self._dt

    def filename(self) -> Path:
        return self._path

    # -- whole files -----------------------------------------------------------------------------

    def _exclusive(self):
        """A lock for a whole-file change: ours if we write, else a brief one (or
        StoreLockedError while another writer has the file)."""
        if self._mode == "r+" or self._superseded:
            self._need_writer()  # a superseded writer changes nothing
            return None
        guard = Fd(self._path, os.O_RDONLY)
        try:
            lock(guard.fd, str(self._path))
        except BaseException:
            guard.close()
            raise
        return guard

    def backup(self, to_path: str | os.PathLike[str], resize: bool = False) -> Path:
        """Copy the file as of now to `to_path` (a directory when it has no suffix); with
        `resize`, only data() is kept, with no spare room. Returns the new file's path."""
        self._sync()
        path = Path(to_path)
        if not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / self._path.name
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        if path.resolve() == self._path.resolve():
            raise InvalidArgumentError(f"cannot back {self._path} up onto itself")
        start, end, cap = self._start, self._end, self._h.capacity
        if resize:
            rows, cap, start, end = self._a[start:end], end - start, 0, end - start
        else:
            rows = self._a[:end]  # a copy of what readers see, never a half-written row
        write_new_file(path, self._dt, self._rs, rows, cap, start, end)
        return path

    def rename(self, name: str | os.PathLike[str]) -> bool:
        """Move the file to `name` (replacing a file there); the object follows it."""
        dest = Path(os.fspath(name))
        guard = self._exclusive()
        try:
            try:
                os.replace(self._path, dest)
                moved = False
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                shutil.move(self._path, dest)  # another file system: a copy, a new inode
                moved = True
        finally:
            if guard is not None:
                guard.close()
        self._path = dest
        if moved and self._mode is not None:
            self.load(self._mode)
        return True

    def remove(self) -> bool:
        """Delete the file (refused while another writer has it). Returns True."""
        guard = self._exclusive()
        try:
            os.unlink(self._path)
        finally:
            if guard is not None:
                guard.close()
        self.close()
        return True

    def merge(self, other: NPYT | str | os.PathLike[str]) -> bool:
        """Append all of `other` (an NPYT or a path) and delete it. Returns True."""
        self._need_writer()
        if not isinstance(other, NPYT):
            other = NPYT(other)
        if other._path.resolve() == self._path.resolve():
            raise InvalidArgumentError("cannot merge a file into itself")
        if not other._writing():
            # Its lock first, so that a failure leaves both files as they were; a writer of it
            # elsewhere in this process is refused, not taken over.
            other._open("r+", take_over=False)
        self.expend(other.data())
        return other.remove()
